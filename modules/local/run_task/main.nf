process RUN_TASK {
    // one task of the plan, included under each kind's process name (slimreg.kinds: SPLIT_STACK, BUILD_TEMPLATE,
    // CORRECT_MOTION, PROJECT_SESSION, REGISTER, MERGE_CHUNKS, MERGE_CHANNELS, PUBLISH_IMAGE, GENERATE_REGISTRATION_QC)
    tag "${meta.id}"

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    // the plan's estimate for this task (1 GB floor), more on each retry after an out-of-memory kill (never more
    // threads: conf/base.config keeps cpus fixed); resourceLimits caps both
    memory { "${((Math.max(meta.peak_memory_bytes as long, 1073741824L) * task.attempt) / 1048576L) as long} MB" }
    disk { "${(Math.max(meta.disk_bytes as long, 1073741824L) / 1048576L) as long} MB" }

    input:
    // spec: the task's own JSON (slimreg.plan.Plan.task_spec), hashed by value so that -resume keeps every task
    // whose spec and files did not change; sources: its samplesheet files, in the spec's order; products: the
    // files of the tasks it depends on, sorted by name (found by name)
    tuple val(meta), val(spec), path(sources, stageAs: 'sources/*/*'), path(products)

    output:
    // a skipped QC or merge (its image did not register) writes nothing: both outputs are optional; hidden: an
    // OME-Zarr's metadata are dot files (.zattrs, .zgroup, .zarray)
    tuple val(meta), path("{registered,transforms,work,qc,merged}/**", hidden: true), emit: files, optional: true
    // for the report: its QC files and register logs in their folders (a picture stays beside its JSON), as links
    // in a folder of their own (a folder that held the published files would hide them from publishDir)
    path "report_inputs", type: 'dir', emit: results, optional: true
    path "*.memory.json", emit: memory
    path "versions.yml", emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    export VIPS_CONCURRENCY=${task.cpus} OMP_NUM_THREADS=${task.cpus} OPENCV_FOR_THREADS_NUM=${task.cpus} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=${task.cpus}
    cat > task.json <<'END_OF_TASK_SPEC'
${spec}
END_OF_TASK_SPEC
    slimreg run-task --spec task.json --root . --keep-going --memory-log ${meta.id}.memory.json ${args}
    for made in qc/*/*_qc.* qc/*/*.motion.* transforms/*/*.register.json; do
        if [ -f "\$made" ]; then mkdir -p "report_inputs/\$(dirname "\$made")" && ln "\$made" "report_inputs/\$made"; fi
    done
    slimreg versions --process ${task.process} > versions.yml
    """

    stub:
    // every output the plan names for this task, empty (plan.csv's outputs column)
    def outputs = meta.outputs.join(' ')
    """
    for output in ${outputs}; do mkdir -p "\$(dirname "\$output")" && touch "\$output"; done
    for output in ${outputs}; do case "\$output" in qc/*|*.register.json) mkdir -p "report_inputs/\$(dirname "\$output")" && touch "report_inputs/\$output";; esac; done
    echo '{"task": "${meta.id}", "steps": []}' > ${meta.id}.memory.json
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
