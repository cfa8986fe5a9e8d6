process MERGE_CHUNKS {
    tag "${meta.id}"
    label 'process_single'

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    input:
    // spec: the task's own JSON (slimreg.plan.Plan.task_spec), hashed by value so that -resume keeps every task
    // whose spec and files did not change; sources: its samplesheet files, in the spec's order
    tuple val(meta), val(spec), path(sources, stageAs: 'sources/*/*'), path(products)

    output:
    tuple val(meta), path("registered/**"), emit: files
    path "*.memory.json", emit: memory
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def preset = task.ext.preset ?: params.preset
    """
    export VIPS_CONCURRENCY=${task.cpus} OMP_NUM_THREADS=${task.cpus} OPENCV_FOR_THREADS_NUM=${task.cpus} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=${task.cpus}
    cat > task.json <<'END_OF_TASK_SPEC'
${spec}
END_OF_TASK_SPEC
    slimreg run-task --spec task.json --root . --preset ${preset} --memory-log ${meta.id}.memory.json
    slimreg versions --process ${task.process} > versions.yml
    """

    stub:
    """
    mkdir -p registered/${meta.sample} && touch registered/${meta.sample}/${meta.id}.ome.tif
    echo '{"task": "${meta.id}", "steps": []}' > ${meta.id}.memory.json
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
