process PROBE {
    tag "${given}"
    label 'process_single'

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    input:
    // given: the file as the samplesheet names it (how the plan refers to it); file: the file, staged here
    tuple val(given), path(file, stageAs: 'input/*')

    output:
    path "header.json", emit: header
    path "versions.yml", emit: versions

    script:
    // the sheet's text may hold spaces or quotes: pass it single-quoted, each ' written as '\''
    def quoted_given = "'" + given.replace("'", "'\\''") + "'"
    """
    slimreg probe --file "${file}" --given ${quoted_given} --out header.json
    slimreg versions --process ${task.process} > versions.yml
    """

    stub:
    """
    echo '{"format": "slimreg-header", "given": "${given}", "kind": "stub"}' > header.json
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
