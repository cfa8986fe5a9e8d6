process REPORT {
    label 'process_single'

    conda "${moduleDir}/../../../environment.yml"
    container "${params.container}"

    input:
    path(results, stageAs: 'results/*/*')
    path plan

    output:
    path "report/report.html", emit: html
    path "report/metrics.csv", emit: metrics
    path "report/slimreg_mqc.tsv", emit: multiqc
    path "versions.yml", emit: versions

    script:
    """
    mkdir -p results  # nothing staged when nothing was registered (a sheet of single-image samples)
    slimreg report --results results --plan ${plan} --outdir report
    slimreg versions --process ${task.process} > versions.yml
    """

    stub:
    """
    mkdir -p report
    touch report/report.html report/slimreg_mqc.tsv
    echo 'sample,image,status,reasons' > report/metrics.csv
    printf '"%s":\n    slimreg: stub\n' "${task.process}" > versions.yml
    """
}
