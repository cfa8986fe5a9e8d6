#!/usr/bin/env nextflow
/*
    slimreg: bounded-memory registration of very large microscopy images.
    All logic (pre-flight, chunking, batching, registration, QC) lives in the slimreg Python package;
    this pipeline runs the tasks of the plan that its PLAN process writes.
*/

include { PIPELINE_INITIALISATION } from './subworkflows/local/utils_slimreg_pipeline'
include { REGISTRATION            } from './subworkflows/local/registration'

workflow {
    main:
    PIPELINE_INITIALISATION(params.input, "${params.demo}".toBoolean(), params.demo_size as int)
    REGISTRATION(
        PIPELINE_INITIALISATION.out.samplesheet,
        PIPELINE_INITIALISATION.out.files,
        file("${projectDir}/assets/stub/plan.csv", checkIfExists: true)
    )

    REGISTRATION.out.versions
        .mix(PIPELINE_INITIALISATION.out.versions)
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info", sort: true, newLine: true)
}
