//
// Executes the plan that PLAN computed: no batching, chunking or memory logic lives here.
// PROBE reads each samplesheet file's header where it is staged; PLAN turns the headers into tasks (plan.csv)
// and one spec per task; each task runs with `slimreg run-task --spec` in RUN_TASK, included under its kind's
// process name, its samplesheet files staged by Nextflow and the files of the tasks it depends on beside them.
// Recordings are corrected for motion first (BUILD_TEMPLATE once per session, then CORRECT_MOTION per piece).
// An image that cannot be registered is recorded by its REGISTER task, which still succeeds: its batch-mates are
// registered and checked, the report lists the failure first, and RUN_OUTCOME then ends the run non-zero.
//

include { PROBE                                } from '../../../modules/local/probe'
include { PLAN                                 } from '../../../modules/local/plan'
include { RUN_TASK as SPLIT_STACK              } from '../../../modules/local/run_task'
include { RUN_TASK as BUILD_TEMPLATE           } from '../../../modules/local/run_task'
include { RUN_TASK as CORRECT_MOTION           } from '../../../modules/local/run_task'
include { RUN_TASK as PROJECT_SESSION          } from '../../../modules/local/run_task'
include { RUN_TASK as REGISTER                 } from '../../../modules/local/run_task'
include { RUN_TASK as MERGE_CHUNKS             } from '../../../modules/local/run_task'
include { RUN_TASK as MERGE_CHANNELS           } from '../../../modules/local/run_task'
include { RUN_TASK as PUBLISH_IMAGE            } from '../../../modules/local/run_task'
include { RUN_TASK as GENERATE_REGISTRATION_QC } from '../../../modules/local/run_task'
include { REPORT                               } from '../../../modules/local/report'
include { RUN_OUTCOME                          } from '../../../modules/local/run_outcome'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_TEMPLATES               } from '../wait_for_dependencies'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_CORRECTED_FRAMES         } from '../wait_for_dependencies'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_SPLITS_AND_PROJECTIONS } from '../wait_for_dependencies'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_REGISTRATION_TO_MERGE  } from '../wait_for_dependencies'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_REGISTRATION_TO_QC     } from '../wait_for_dependencies'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_ROUNDS_TO_MERGE         } from '../wait_for_dependencies'
include { WAIT_FOR_DEPENDENCIES as WAIT_FOR_IMAGES_TO_PUBLISH       } from '../wait_for_dependencies'

workflow REGISTRATION {
    take:
    ch_samplesheet // channel: path to samplesheet.csv
    ch_files       // channel: [the samplesheet's text for a file, the file], for every image and landmarks file
    stub_plan      // path: the plan a -stub run's PLAN writes (assets/stub/plan.csv)

    main:
    ch_versions = channel.empty()

    PROBE(ch_files)
    PLAN(ch_samplesheet, PROBE.out.header.collect().ifEmpty([]), stub_plan)
    ch_versions = ch_versions.mix(PROBE.out.versions.first(), PLAN.out.versions)

    // the plan names each samplesheet file by the sheet's text: map it back to the file
    ch_located = ch_files.toList().map { pairs -> pairs.collectEntries { pair -> [(pair[0]): pair[1]] } }
    ch_specs = PLAN.out.specs.flatten().map { spec -> [spec.baseName, spec.text] }

    // one item per task: [meta, its spec (JSON text), its samplesheet files]
    ch_tasks = PLAN.out.csv
        .splitCsv(header: true)
        .map { row ->
            def meta = [id: row.id, kind: row.kind, sample: row.sample, peak_memory_bytes: row.peak_memory_bytes as long,
                        disk_bytes: row.disk_bytes as long,
                        depends_on: row.depends_on ? row.depends_on.tokenize(';') : [],
                        outputs: row.outputs ? row.outputs.tokenize(';') : []]
            [row.id, meta, row.sources ? row.sources.tokenize(';') : []]
        }
        .join(ch_specs)
        .combine(ch_located)
        .map { id, meta, sources, spec, located ->
            [meta, spec, sources.collect { given -> located[given] ?: error("Task ${id} reads ${given}, which the samplesheet does not name: plan and samplesheet disagree (was the samplesheet changed during the run?)") }]
        }
        .branch { meta, _spec, _sources ->
            split: meta.kind == 'split'
            template: meta.kind == 'template'
            motion: meta.kind == 'motion'
            project: meta.kind == 'project'
            register: meta.kind == 'register'
            merge: meta.kind == 'merge'
            channels: meta.kind == 'channels'
            publish: meta.kind == 'publish'
            qc: meta.kind == 'qc'
        }

    // splits and motion templates read samplesheet files only: they start at once. A path output matching one
    // file is a bare Path (Path + List would iterate its name components): wrap every output in a list
    SPLIT_STACK(ch_tasks.split.map { meta, spec, sources -> [meta, spec, sources, []] })
    BUILD_TEMPLATE(ch_tasks.template.map { meta, spec, sources -> [meta, spec, sources, []] })
    // each piece of a recording corrected for motion (--motion_correction) when its session's template is built
    WAIT_FOR_TEMPLATES(ch_tasks.motion, BUILD_TEMPLATE.out.files.map { meta, files -> [meta.id, [files].flatten()] })
    CORRECT_MOTION(WAIT_FOR_TEMPLATES.out.ready)
    ch_corrected = CORRECT_MOTION.out.files.map { meta, files -> [meta.id, [files].flatten()] }
    // a session's projection from its samplesheet files at once or, corrected for motion, when its pieces are
    WAIT_FOR_CORRECTED_FRAMES(ch_tasks.project, ch_corrected)
    PROJECT_SESSION(WAIT_FOR_CORRECTED_FRAMES.out.ready)
    ch_stage_one = SPLIT_STACK.out.files.mix(PROJECT_SESSION.out.files).map { meta, files -> [meta.id, [files].flatten()] }
        .mix(ch_corrected)

    // each REGISTER (the reference plus up to --batch_size moving sessions) when its own splits and projections are
    // done
    WAIT_FOR_SPLITS_AND_PROJECTIONS(ch_tasks.register, ch_stage_one)
    REGISTER(WAIT_FOR_SPLITS_AND_PROJECTIONS.out.ready)
    ch_registered = REGISTER.out.files.map { meta, files -> [meta.id, [files].flatten()] }

    // MERGE and QC when their REGISTER (and, for QC of sessions, the projections) are done; they never depend on
    // split pieces, which share file names with their registered copies (products are staged flat, found by name).
    // A reference session's corrected pieces are merged when their CORRECT_MOTION tasks are done: each task is
    // handed only the files of the tasks it depends on, so a moving session's merge never sees corrected pieces
    WAIT_FOR_REGISTRATION_TO_MERGE(ch_tasks.merge, ch_registered.mix(ch_corrected))
    MERGE_CHUNKS(WAIT_FOR_REGISTRATION_TO_MERGE.out.ready)
    // one multi-channel image per sample of fluorescence rounds (--merge_channels), when its REGISTER tasks are done
    WAIT_FOR_ROUNDS_TO_MERGE(ch_tasks.channels, ch_registered)
    MERGE_CHANNELS(WAIT_FOR_ROUNDS_TO_MERGE.out.ready)
    // the reference into registered/<sample>/ (from its samplesheet file, at once) and, with --format ome-zarr,
    // each registered or merged OME-TIFF converted, when the task that wrote it is done
    ch_merged = MERGE_CHUNKS.out.files.mix(MERGE_CHANNELS.out.files).map { meta, files -> [meta.id, [files].flatten()] }
    WAIT_FOR_IMAGES_TO_PUBLISH(ch_tasks.publish, ch_registered.mix(ch_merged, ch_corrected))
    PUBLISH_IMAGE(WAIT_FOR_IMAGES_TO_PUBLISH.out.ready)
    WAIT_FOR_REGISTRATION_TO_QC(ch_tasks.qc, ch_stage_one.mix(ch_registered))
    GENERATE_REGISTRATION_QC(WAIT_FOR_REGISTRATION_TO_QC.out.ready)

    // the report, from every QC result, every register log and every task's measured memory: the one step that
    // waits for all; it runs on an empty list too (a sheet of single-image samples registers nothing)
    ch_report_inputs = REGISTER.out.results
        .mix(GENERATE_REGISTRATION_QC.out.results, CORRECT_MOTION.out.results, SPLIT_STACK.out.memory,
            BUILD_TEMPLATE.out.memory, CORRECT_MOTION.out.memory, PROJECT_SESSION.out.memory,
            REGISTER.out.memory, MERGE_CHUNKS.out.memory, MERGE_CHANNELS.out.memory, PUBLISH_IMAGE.out.memory,
            GENERATE_REGISTRATION_QC.out.memory)
        .flatten()
        .toSortedList { a, b -> a.name <=> b.name ?: a.toString() <=> b.toString() }
    REPORT(ch_report_inputs, PLAN.out.plan)

    // after the report: a run in which an image could not be registered ends with a non-zero exit status
    ch_failures = REPORT.out.metrics
        .splitCsv(header: true)
        .filter { row -> row.status == 'failed' }
        .map { row -> "${row.sample}/${row.image}: ${row.reasons}" }
        .toList()
        .filter { failures -> failures }
    RUN_OUTCOME(ch_failures)

    ch_versions = ch_versions.mix(
        SPLIT_STACK.out.versions.first(), BUILD_TEMPLATE.out.versions.first(), CORRECT_MOTION.out.versions.first(),
        PROJECT_SESSION.out.versions.first(), REGISTER.out.versions.first(),
        MERGE_CHUNKS.out.versions.first(), MERGE_CHANNELS.out.versions.first(), PUBLISH_IMAGE.out.versions.first(),
        GENERATE_REGISTRATION_QC.out.versions.first(),
        REPORT.out.versions
    )

    emit:
    plan      = PLAN.out.plan
    preflight = PLAN.out.preflight
    report    = REPORT.out.html
    multiqc   = REPORT.out.multiqc
    versions  = ch_versions
}
