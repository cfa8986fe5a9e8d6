//
// Holds each task until every task it depends on has finished, then hands it the files those tasks made.
// Which task depends on which comes from the plan (meta.depends_on, from plan.csv): nothing is decided here, and
// a task waits for its own dependencies only, never for a whole stage (a sample's REGISTER starts when that
// sample's splits and projections are done, its QC when its REGISTER is done).
//

workflow WAIT_FOR_DEPENDENCIES {
    take:
    ch_tasks // channel: [meta, spec, sources]
    ch_done  // channel: [task id, files] for each finished task the tasks may depend on

    main:
    // one item per dependency: [dependency id, task id, how many dependencies the task has]
    ch_needs = ch_tasks.flatMap { meta, _spec, _sources -> meta.depends_on.collect { dependency -> [dependency, meta.id, meta.depends_on.size()] } }
    // groupKey with the count: each task's files are released as soon as its last dependency has delivered. They
    // arrive in the order the dependencies finish, and Nextflow hashes a list in order: sort them by name (then
    // path), so that -resume finds the task cached whatever order its dependencies finished in
    ch_delivered = ch_needs
        .combine(ch_done, by: 0)
        .map { _dependency, id, count, files -> [groupKey(id, count), files] }
        .groupTuple()
        .map { key, files -> [key.toString(), files.flatten().sort { a, b -> a.name <=> b.name ?: a.toString() <=> b.toString() }] }
    ch_waited = ch_tasks
        .filter { meta, _spec, _sources -> meta.depends_on }
        .map { meta, spec, sources -> [meta.id, meta, spec, sources] }
        .join(ch_delivered)
        .map { _id, meta, spec, sources, products -> [meta, spec, sources, products] }
    ch_ready = ch_tasks
        .filter { meta, _spec, _sources -> !meta.depends_on }
        .map { meta, spec, sources -> [meta, spec, sources, []] }
        .mix(ch_waited)

    emit:
    ready = ch_ready // channel: [meta, spec, sources, products]
}
