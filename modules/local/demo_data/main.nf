process DEMO_DATA {
    label 'process_single'

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    input:
    val size
    // the test profile's demo samplesheet (assets/stub/samplesheet.csv, kept fresh by scripts/make_stub_plan.py):
    // a -stub run writes it and an empty file for each name in it; the real script does not read it
    path(stub_sheet, stageAs: 'stub/samplesheet.csv')

    output:
    path "demo/samplesheet.csv", emit: samplesheet
    path "demo/*.{tif,csv}", emit: files
    path "versions.yml", emit: versions

    script:
    """
    slimreg demo-data demo --size ${size} --frames 12
    slimreg versions --process ${task.process} > versions.yml
    """

    stub:
    """
    mkdir -p demo
    cp ${stub_sheet} demo/samplesheet.csv
    for name in \$(tail -n +2 demo/samplesheet.csv | cut -d, -f2,5 | tr ',' ' '); do touch "demo/\$name"; done
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
