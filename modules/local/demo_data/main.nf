process DEMO_DATA {
    label 'process_single'

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    input:
    val size

    output:
    path "demo/samplesheet.csv", emit: samplesheet
    path "demo/*.{tif,csv}", emit: files
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    slimreg demo-data demo --size ${size} --frames 12
    slimreg versions --process ${task.process} > versions.yml
    """

    stub:
    """
    mkdir -p demo
    echo 'sample,image,reference,session,landmarks' > demo/samplesheet.csv
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
