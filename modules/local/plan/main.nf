process PLAN {
    tag "${samplesheet.name}"
    label 'process_single'

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    input:
    path samplesheet
    // one header per samplesheet file, written by PROBE where the file was staged: PLAN opens no image
    path(headers, stageAs: 'headers/*/*')
    // the test profile's real plan (assets/stub/plan.csv, kept fresh by scripts/make_stub_plan.py): a -stub run
    // writes it, so that the stub run reaches every process; the real script does not read it
    path(stub_plan, stageAs: 'stub/plan.csv')

    output:
    path "plan/plan.json", emit: plan
    path "plan/plan.csv", emit: csv
    path "plan/task_specs/*.json", emit: specs
    path "plan/preflight.json", emit: preflight
    path "versions.yml", emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    slimreg plan --input ${samplesheet} --headers headers --outdir plan ${args}
    slimreg versions --process ${task.process} > versions.yml
    """

    stub:
    """
    mkdir -p plan/task_specs
    cp ${stub_plan} plan/plan.csv
    for id in \$(tail -n +2 plan/plan.csv | cut -d, -f1); do echo '{"format": "slimreg-task", "note": "stub"}' > "plan/task_specs/\$id.json"; done
    echo '{"format": "slimreg-plan", "note": "stub: see plan.csv", "tasks": []}' > plan/plan.json
    echo '{"verdict": "ok", "tasks": []}' > plan/preflight.json
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
