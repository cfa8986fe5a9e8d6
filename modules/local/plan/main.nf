process PLAN {
    tag "${samplesheet.name}"
    label 'process_single'

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    input:
    path samplesheet
    path(images, stageAs: 'images/*/*')

    output:
    path "plan/plan.json", emit: plan
    path "plan/plan.csv", emit: csv
    path "plan/preflight.json", emit: preflight
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    slimreg_plan.py --input ${samplesheet} --outdir plan ${args}
    slimreg_versions.py --process ${task.process} > versions.yml
    """

    stub:
    """
    mkdir -p plan
    echo '{"tasks": []}' > plan/plan.json
    echo 'id,kind,sample,peak_memory_bytes,disk_bytes,depends_on,inputs,outputs' > plan/plan.csv
    echo '{"verdict": "ok", "tasks": []}' > plan/preflight.json
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
