process RUN_OUTCOME {
    // the last step when an image could not be registered: the report is written and published, every other
    // image registered and checked; this step then ends the run with a non-zero exit status naming each failure,
    // as `slimreg run` does
    label 'process_single'
    executor 'local'

    input:
    val failures

    output:
    path "versions.yml", emit: versions

    script:
    def listed = failures.collect { failure -> "  - ${failure}" }.join('\n')
    """
    cat >&2 <<'END_OF_FAILURES'
${failures.size()} image(s) could not be registered (the report lists them first: ${params.outdir}/report/report.html):
${listed}
END_OF_FAILURES
    printf '"%s":\n    bash: "%s"\n' "${task.process}" "\$(bash --version | head -n 1 | sed 's/.*version //; s/ .*//')" > versions.yml
    exit 1
    """

    stub:
    """
    printf '"%s":\n    bash: stub\n' "${task.process}" > versions.yml
    exit 1
    """
}
