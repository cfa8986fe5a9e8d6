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
    PIPELINE_INITIALISATION()
    REGISTRATION(PIPELINE_INITIALISATION.out.samplesheet, PIPELINE_INITIALISATION.out.files)

    REGISTRATION.out.versions
        .mix(PIPELINE_INITIALISATION.out.versions)
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info", sort: true, newLine: true)
}
