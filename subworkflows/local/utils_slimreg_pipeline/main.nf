//
// Pipeline set-up: parameter validation (nf-schema), the samplesheet (or generated demo data).
//

include { validateParameters; paramsSummaryLog } from 'plugin/nf-schema'
include { DEMO_DATA                            } from '../../../modules/local/demo_data'

workflow PIPELINE_INITIALISATION {
    take:
    input     // string: the samplesheet (path or URL), or null with demo
    demo      // boolean: generate the demo series instead
    demo_size // integer: side of the demo images in px

    main:
    // nf-schema checks every parameter and, through the input's schema, each row of the samplesheet;
    // slimreg checks the rest (every image header, the sheet's rules) in PLAN
    validateParameters()
    log.info paramsSummaryLog(workflow)

    ch_versions = channel.empty()
    ch_samplesheet = channel.empty()
    ch_files = channel.empty()
    if( input ) {
        def sheet = file(input, checkIfExists: true)
        // each image and landmarks file once: [the sheet's text, the file]; the plan names files by the sheet's
        // text, and each task gets exactly the files its spec names, staged by Nextflow
        def given = sheet.splitCsv(header: true)
            .collectMany { row -> [row.image, row.landmarks] }
            .findAll { text -> text }
            .collect { text -> text.trim() }
            .unique()
        ch_samplesheet = channel.value(sheet)
        ch_files = channel.fromList(given.collect { text -> [text, locateSamplesheetFile(sheet, text)] })
    }
    else if( demo ) {
        DEMO_DATA(demo_size, file("${projectDir}/assets/stub/samplesheet.csv", checkIfExists: true))
        ch_samplesheet = DEMO_DATA.out.samplesheet
        // the demo sheet names its files by their names, beside it
        ch_files = DEMO_DATA.out.files.flatten().filter { demo_file -> demo_file.name != 'samplesheet.csv' }.map { demo_file -> [demo_file.name, demo_file] }
        ch_versions = ch_versions.mix(DEMO_DATA.out.versions)
    }
    else {
        error("Give a samplesheet with --input, or --demo to register generated demo data.")
    }

    emit:
    samplesheet = ch_samplesheet
    files       = ch_files
    versions    = ch_versions
}

/*
 * A file the samplesheet names, as slimreg resolves it: a URL (s3://, gs://, az://, https://...) or an absolute
 * path as given, a relative path against the samplesheet's own folder (so a sheet and its images move together),
 * on the sheet's own file system: resolved as a Path, never through toString(), which drops a remote path's
 * scheme. '.' and '..' are collapsed here, since object stores do not collapse them.
 */
def locateSamplesheetFile(sheet, String given) {
    def isUrl = given ==~ /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/.*/
    def located = null
    if( isUrl || given.startsWith('/') ) {
        located = file(given)
    }
    else {
        located = given.tokenize('/').inject(sheet.parent) { folder, part ->
            part == '.' ? folder : part == '..' ? (folder.parent ?: folder) : folder.resolve(part)
        }
    }
    if( !located.exists() ) {
        error("Samplesheet ${sheet.toUriString()} names ${given}, which is not at ${located.toUriString()}. Fix: give the path relative to the samplesheet's folder, absolute, or as a URL.")
    }
    return located
}
