process MERGE_CHUNKS {
    tag "${meta.id}"
    label 'process_single'

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    input:
    tuple val(meta), path(sources, stageAs: 'sources/*/*'), path(products)
    path plan

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
    slimreg run-task --plan ${plan} --task ${meta.id} --root . --preset ${preset} --memory-log ${meta.id}.memory.json
    slimreg versions --process ${task.process} > versions.yml
    """

    stub:
    """
    mkdir -p registered/${meta.sample} && touch registered/${meta.sample}/${meta.id}.ome.tif
    echo '{"task": "${meta.id}", "steps": []}' > ${meta.id}.memory.json
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
