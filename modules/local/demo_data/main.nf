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
    // the test profile's demo samplesheet (assets/stub/samplesheet.csv, kept fresh by scripts/make_stub_plan.py)
    // and an empty file for each name in it, so that PROBE runs and PLAN's stub plan finds every task's files
    def stub_sheet = file("${projectDir}/assets/stub/samplesheet.csv").text.trim()
    """
    mkdir -p demo
    cat > demo/samplesheet.csv <<'END_OF_STUB_SHEET'
${stub_sheet}
END_OF_STUB_SHEET
    for name in \$(tail -n +2 demo/samplesheet.csv | cut -d, -f2,5 | tr ',' ' '); do touch "demo/\$name"; done
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
