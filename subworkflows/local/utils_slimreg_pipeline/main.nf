//
// Pipeline set-up: parameter validation (nf-schema), the samplesheet (or generated demo data).
//

include { validateParameters; paramsSummaryLog; samplesheetToList } from 'plugin/nf-schema'
include { DEMO_DATA                                             } from '../../../modules/local/demo_data'

workflow PIPELINE_INITIALISATION {
    main:
    validateParameters()
    log.info paramsSummaryLog(workflow)

    ch_versions = Channel.empty()
    if (params.input) {
        // nf-schema checks each row against assets/schema_input.json; slimreg validates the rest in PLAN
        def rows = samplesheetToList(params.input, "${projectDir}/assets/schema_input.json")
        ch_samplesheet = Channel.value(file(params.input, checkIfExists: true))
        ch_images = Channel.fromList(rows.collect { row -> row[1] }).collect()
    } else if (params.demo) {
        DEMO_DATA(params.demo_size)
        ch_samplesheet = DEMO_DATA.out.samplesheet
        ch_images = DEMO_DATA.out.files
        ch_versions = ch_versions.mix(DEMO_DATA.out.versions)
    } else {
        error "Give a samplesheet with --input, or --demo to register generated demo data."
    }

    emit:
    samplesheet = ch_samplesheet
    images      = ch_images
    versions    = ch_versions
}
