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
        // nf-schema checks each row against assets/schema_input.json; slimreg validates the rest in PLAN.
        // One rule for relative paths, slimreg's: against the samplesheet's folder (not the launch folder), so a
        // sheet and its images move together; URLs (s3://, gs://, az://, https://) and absolute paths as given
        def sheet = file(params.input, checkIfExists: true)
        def located = { String given ->
            def as_given = given ==~ /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/.*/ || given.startsWith('/')
            file(as_given ? given : sheet.parent.resolve(given).toString(), checkIfExists: true)
        }
        def rows = samplesheetToList(params.input, "${projectDir}/assets/schema_input.json")
        ch_samplesheet = Channel.value(sheet)
        // each row: [meta, image, landmarks]; every file as [the sheet's text, the file]: the plan names files by
        // the sheet's text, and each task gets exactly the files its spec names, staged by Nextflow
        ch_files = Channel.fromList(rows.collectMany { row -> row[1..-1].findAll { it }.collect { given -> [given as String, located(given as String)] } }.unique())
    } else if ("${params.demo}".toBoolean()) {
        DEMO_DATA(params.demo_size as int)
        ch_samplesheet = DEMO_DATA.out.samplesheet
        // the demo sheet names its files by their names, beside it
        ch_files = DEMO_DATA.out.files.flatten().filter { demo_file -> demo_file.name != 'samplesheet.csv' }.map { demo_file -> [demo_file.name, demo_file] }
        ch_versions = ch_versions.mix(DEMO_DATA.out.versions)
    } else {
        error "Give a samplesheet with --input, or --demo to register generated demo data."
    }

    emit:
    samplesheet = ch_samplesheet
    files       = ch_files
    versions    = ch_versions
}
