//
// Executes the plan that PLAN computed: no batching, chunking or memory logic lives here.
// PROBE reads each samplesheet file's header where it is staged; PLAN turns the headers into tasks (plan.csv)
// and one spec per task; each process runs one task from its own spec with `slimreg run-task --spec`, its
// samplesheet files staged by Nextflow and the files of the tasks it depends on beside them.
//

include { PROBE                    } from '../../../modules/local/probe'
include { PLAN                     } from '../../../modules/local/plan'
include { SPLIT_STACK              } from '../../../modules/local/split_stack'
include { PROJECT_SESSION          } from '../../../modules/local/project_session'
include { REGISTER                 } from '../../../modules/local/register'
include { MERGE_CHUNKS             } from '../../../modules/local/merge_chunks'
include { GENERATE_REGISTRATION_QC } from '../../../modules/local/generate_registration_qc'
include { REPORT                   } from '../../../modules/local/report'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_SPLITS_AND_PROJECTIONS } from '../wait_for_dependencies'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_REGISTRATION_TO_MERGE  } from '../wait_for_dependencies'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_REGISTRATION_TO_QC     } from '../wait_for_dependencies'

workflow REGISTRATION {
    take:
    ch_samplesheet // channel: path to samplesheet.csv
    ch_files       // channel: [the samplesheet's text for a file, the file], for every image and landmarks file

    main:
    ch_versions = Channel.empty()

    PROBE(ch_files)
    PLAN(ch_samplesheet, PROBE.out.header.collect().ifEmpty([]))
    ch_versions = ch_versions.mix(PROBE.out.versions.first(), PLAN.out.versions)

    // the plan names each samplesheet file by the sheet's text: map it back to the file
    ch_located = ch_files.toList().map { pairs -> pairs.collectEntries { pair -> [(pair[0]): pair[1]] } }
    ch_specs = PLAN.out.specs.flatten().map { spec -> [spec.baseName, spec.text] }

    // one item per task: [meta, its spec (JSON text), its samplesheet files]
    ch_tasks = PLAN.out.csv
        .splitCsv(header: true)
        .map { row ->
            def meta = [id: row.id, kind: row.kind, sample: row.sample, peak_memory_bytes: row.peak_memory_bytes as long,
                        depends_on: row.depends_on ? row.depends_on.tokenize(';') : []]
            [row.id, meta, row.sources ? row.sources.tokenize(';') : []]
        }
        .join(ch_specs)
        .combine(ch_located)
        .map { id, meta, sources, spec, located ->
            [meta, spec, sources.collect { given -> located[given] ?: error("Task ${id} reads ${given}, which the samplesheet does not name: plan and samplesheet disagree (was the samplesheet changed during the run?)") }]
        }
        .branch { meta, spec, sources ->
            split: meta.kind == 'split'
            project: meta.kind == 'project'
            register: meta.kind == 'register'
            merge: meta.kind == 'merge'
            qc: meta.kind == 'qc'
        }

    // splits and projections read samplesheet files only: they start at once
    SPLIT_STACK(ch_tasks.split.map { meta, spec, sources -> [meta, spec, sources, []] })
    PROJECT_SESSION(ch_tasks.project.map { meta, spec, sources -> [meta, spec, sources, []] })
    // a path output matching one file is a bare Path (Path + List would iterate its name components): wrap every
    // output in a list
    ch_stage_one = SPLIT_STACK.out.files.mix(PROJECT_SESSION.out.files).map { meta, files -> [meta.id, [files].flatten()] }

    // each REGISTER (the reference plus up to --batch_size moving sessions) when its own splits and projections are
    // done
    WAIT_FOR_SPLITS_AND_PROJECTIONS(ch_tasks.register, ch_stage_one)
    REGISTER(WAIT_FOR_SPLITS_AND_PROJECTIONS.out.ready)
    ch_registered = REGISTER.out.files.map { meta, files -> [meta.id, [files].flatten()] }

    // MERGE and QC when their REGISTER (and, for QC of sessions, the projections) are done; they never depend on
    // split pieces, which share file names with their registered copies (products are staged flat, found by name)
    WAIT_FOR_REGISTRATION_TO_MERGE(ch_tasks.merge, ch_registered)
    MERGE_CHUNKS(WAIT_FOR_REGISTRATION_TO_MERGE.out.ready)
    WAIT_FOR_REGISTRATION_TO_QC(ch_tasks.qc, ch_stage_one.mix(ch_registered))
    GENERATE_REGISTRATION_QC(WAIT_FOR_REGISTRATION_TO_QC.out.ready)

    // the report, from every QC result and every task's measured memory: the one step that waits for all
    ch_report_inputs = GENERATE_REGISTRATION_QC.out.qc
        .flatMap { meta, png, json -> [png, json] }
        .mix(SPLIT_STACK.out.memory, PROJECT_SESSION.out.memory, REGISTER.out.memory, MERGE_CHUNKS.out.memory,
            GENERATE_REGISTRATION_QC.out.memory)
        .collect()
    REPORT(ch_report_inputs, PLAN.out.plan.first())

    ch_versions = ch_versions.mix(
        SPLIT_STACK.out.versions.first(), PROJECT_SESSION.out.versions.first(), REGISTER.out.versions.first(),
        MERGE_CHUNKS.out.versions.first(), GENERATE_REGISTRATION_QC.out.versions.first(), REPORT.out.versions
    )

    emit:
    plan      = PLAN.out.plan
    preflight = PLAN.out.preflight
    report    = REPORT.out.html
    multiqc   = REPORT.out.multiqc
    versions  = ch_versions
}
