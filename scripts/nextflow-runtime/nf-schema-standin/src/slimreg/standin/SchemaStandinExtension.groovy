package slimreg.standin

import groovy.json.JsonSlurper
import groovy.util.logging.Slf4j
import nextflow.Session
import nextflow.plugin.extension.Function
import nextflow.plugin.extension.PluginExtensionPoint
import nextflow.script.WorkflowMetadata

/**
 * A stand-in for the two nf-schema functions slimreg's pipeline calls, for machines that reach Maven Central but
 * not Nextflow's plugin registry (where nf-schema is published): scripts/nextflow installs it under the plugin's
 * own id so that the pipeline runs unchanged. It is not nf-schema: it checks required parameters, enums and
 * types of nextflow_schema.json, nothing more (no samplesheet schema, no formats, no patterns), and says so at
 * start. Production runs use the real plugin.
 */
@Slf4j
class SchemaStandinExtension extends PluginExtensionPoint {

    private Session session

    @Override
    protected void init(Session session) {
        this.session = session
    }

    /** Required parameters present, enum values allowed, numbers and booleans readable as such. */
    @Function
    void validateParameters(Map options = [:]) {
        log.warn 'nf-schema stand-in (slimreg, scripts/nextflow): parameters checked for presence, enum and type only'
        final Map params = session.params
        final List<String> errors = []
        schemaProperties().each { String name, Map spec, boolean required ->
            final value = castLikeNfSchema(params.get(name))
            if( value == null || value == '' ) {
                if( required ) errors << "* Missing required parameter: --${name}".toString()
                return
            }
            final types = spec.type instanceof List ? spec.type as List : [spec.type]
            if( !types.any { type -> fits(value, type as String) } )
                errors << "* --${name} (${value}): expected ${types.join(' or ')}".toString()
            if( spec.enum && !((spec.enum as List)*.toString()).contains(value.toString()) )
                errors << "* --${name} (${value}): expected one of ${spec.enum}".toString()
        }
        if( errors )
            throw new IllegalArgumentException("The following invalid input values have been detected:\n\n${errors.join('\n')}\n")
    }

    @Function
    String paramsSummaryLog(WorkflowMetadata workflow) {
        paramsSummaryLog([:], workflow)
    }

    /** The parameters that differ from nextflow_schema.json's defaults, one per line. */
    @Function
    String paramsSummaryLog(Map options, WorkflowMetadata workflow) {
        final Map params = session.params
        final Map defaults = [:]
        schemaProperties().each { String name, Map spec, boolean required -> defaults[name] = spec.get('default') }
        final lines = params.keySet().sort().findAll { key -> key in defaults && params[key] != null && params[key] != defaults[key] }
            .collect { key -> "  ${key.padRight(28)}: ${params[key]}" }
        return "Parameters that differ from the defaults (run ${workflow.runName}):\n${lines.join('\n')}"
    }

    /** Each parameter of nextflow_schema.json: name, its schema entry, whether it is required. */
    private List<List> schemaProperties() {
        final file = session.baseDir.resolve('nextflow_schema.json')
        final Map schema = new JsonSlurper().parse(file.toFile()) as Map
        final List<Map> groups = ((schema.get('$defs') ?: [:]) as Map).values().toList() + [schema]
        final List<List> result = []
        groups.each { Map group ->
            final required = (group.required ?: []) as List
            ((group.properties ?: [:]) as Map).each { name, spec -> result << [name, spec, name in required] }
        }
        return result
    }

    /**
     * Under the strict parser a command-line value arrives as a string; nf-schema 2.7 casts it before validating
     * ('2' becomes 2, 'true' becomes true), so a numeric value fails a schema type of string alone.
     */
    private static Object castLikeNfSchema(Object value) {
        if( !(value instanceof CharSequence) ) return value
        final text = value.toString()
        if( text ==~ /-?\d+/ ) return text.toLong()
        if( text ==~ /-?\d*\.\d+([eE][-+]?\d+)?/ ) return text.toBigDecimal()
        if( text in ['true', 'false'] ) return text.toBoolean()
        return value
    }

    private static boolean fits(Object value, String type) {
        switch( type ) {
            case 'string': return value instanceof CharSequence
            case 'integer': return value instanceof Integer || value instanceof Long || value instanceof BigInteger
            case 'number': return value instanceof Number
            case 'boolean': return value instanceof Boolean
            default: return true
        }
    }
}
