package slimreg.standin

import groovy.transform.CompileStatic
import nextflow.plugin.BasePlugin
import org.pf4j.PluginWrapper

/**
 * The plugin class of slimreg's nf-schema stand-in (see SchemaStandinExtension for why it exists).
 */
@CompileStatic
class SchemaStandinPlugin extends BasePlugin {
    SchemaStandinPlugin(PluginWrapper wrapper) {
        super(wrapper)
    }
}
