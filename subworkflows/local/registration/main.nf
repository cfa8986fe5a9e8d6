//
// Executes the plan that PLAN computed: no batching, chunking or memory logic lives here.
// Tasks are read from plan.csv; each process runs one task id with `slimreg_task.py`.
//

include { PLAN                     } from '../../../modules/local/plan'
include { SPLIT_STACK              } from '../../../modules/local/split_stack'
include { PROJECT_SESSION          } from '../../../modules/local/project_session'
include { REGISTER                 } from '../../../modules/local/register'
include { MERGE_CHUNKS             } from '../../../modules/local/merge_chunks'
include { GENERATE_REGISTRATION_QC } from '../../../modules/local/generate_registration_qc'
include { REPORT                   } from '../../../modules/local/report'

workflow REGISTRATION {
    take:
    ch_samplesheet // channel: path to samplesheet.csv
    ch_images      // channel: list of the images it names

    main:
    ch_versions = Channel.empty()

    PLAN(ch_samplesheet, ch_images)
    ch_versions = ch_versions.mix(PLAN.out.versions)
    ch_plan = PLAN.out.plan.first()

    // one item per task: [ meta, absolute inputs (samplesheet files) ]
    ch_tasks = PLAN.out.csv
        .splitCsv(header: true)
        .map { row ->
            def meta = [id: row.id, kind: row.kind, sample: row.sample, peak_memory_bytes: row.peak_memory_bytes as long]
            def sources = row.inputs ? row.inputs.tokenize(';').findAll { it.startsWith('/') }.collect { file(it) } : []
            [meta, sources]
        }
        .branch { meta, sources ->
            split: meta.kind == 'split'
            project: meta.kind == 'project'
            register: meta.kind == 'register'
            merge: meta.kind == 'merge'
            qc: meta.kind == 'qc'
        }

    ch_samples = PLAN.out.csv
        .splitCsv(header: true)
        .map { row -> row.sample }
        .filter { it }
        .unique()

    // stage 1: splits and projections, gathered per sample
    SPLIT_STACK(ch_tasks.split.map { meta, sources -> [meta, sources, []] }, ch_plan)
    PROJECT_SESSION(ch_tasks.project.map { meta, sources -> [meta, sources, []] }, ch_plan)
    ch_stage1 = ch_samples.map { sample -> [sample, []] }
        .mix(SPLIT_STACK.out.files.mix(PROJECT_SESSION.out.files).map { meta, files -> [meta.sample, [files].flatten()] })
        .groupTuple()
        .map { sample, files -> [sample, files.flatten()] }

    // stage 2: REGISTER, one task per batch (the reference plus up to --batch_size moving sessions)
    REGISTER(
        ch_tasks.register
            .map { meta, sources -> [meta.sample, meta, sources] }
            .combine(ch_stage1, by: 0)
            .map { sample, meta, sources, products -> [meta, sources, products] },
        ch_plan
    )
    // MERGE and QC read registered outputs and projections, never split pieces: a piece and its registered
    // copy share a file name, and products are staged flat (found by name)
    ch_products = ch_samples.map { sample -> [sample, []] }
        .mix(PROJECT_SESSION.out.files.map { meta, files -> [meta.sample, [files].flatten()] })
        // a path output matching one file is a bare Path (Path + List would iterate its name components):
        // wrap every output in a list before combining
        .mix(REGISTER.out.results.map { meta, images, transforms -> [meta.sample, [images, transforms].flatten()] })
        .mix(REGISTER.out.projections.map { meta, files -> [meta.sample, [files].flatten()] })
        .groupTuple()
        .map { sample, files -> [sample, files.flatten()] }

    // stage 3: merged stacks and QC, one image at a time
    MERGE_CHUNKS(
        ch_tasks.merge
            .map { meta, sources -> [meta.sample, meta, sources] }
            .combine(ch_products, by: 0)
            .map { sample, meta, sources, products -> [meta, sources, products] },
        ch_plan
    )
    GENERATE_REGISTRATION_QC(
        ch_tasks.qc
            .map { meta, sources -> [meta.sample, meta, sources] }
            .combine(ch_products, by: 0)
            .map { sample, meta, sources, products -> [meta, sources, products] },
        ch_plan
    )

    // stage 4: the report, from every QC result and every task's measured memory
    ch_report_inputs = GENERATE_REGISTRATION_QC.out.qc
        .flatMap { meta, png, json -> [png, json] }
        .mix(SPLIT_STACK.out.memory, PROJECT_SESSION.out.memory, REGISTER.out.memory, MERGE_CHUNKS.out.memory,
            GENERATE_REGISTRATION_QC.out.memory)
        .collect()
    REPORT(ch_report_inputs, ch_plan)

    ch_versions = ch_versions.mix(
        SPLIT_STACK.out.versions.first(), PROJECT_SESSION.out.versions.first(), REGISTER.out.versions.first(),
        MERGE_CHUNKS.out.versions.first(), GENERATE_REGISTRATION_QC.out.versions.first(), REPORT.out.versions
    )

    emit:
    plan      = ch_plan
    preflight = PLAN.out.preflight
    report    = REPORT.out.html
    multiqc   = REPORT.out.multiqc
    versions  = ch_versions
}
