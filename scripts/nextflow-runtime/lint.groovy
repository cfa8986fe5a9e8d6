/*
    `nextflow lint` for scripts/nextflow: Nextflow's own strict parsers (nf-lang's ScriptParser and ConfigParser,
    the ones `nextflow lint` and the 26.04 default run) over every .nf and .config under the given paths, printing
    every error and warning with file and line. Why not `nextflow lint` itself: in 25.04.4, the newest Nextflow on
    Maven Central, it stops with a NullPointerException on any file that has warnings but no errors, or errors but
    no warnings. Exit status: 1 if any file has an error, or a warning when -strict is given (deprecations are
    warnings); 0 otherwise.

    Usage: java -cp "LIB/*" groovy.ui.GroovyMain lint.groovy [-strict] PATH...
*/

import java.nio.file.Files
import java.nio.file.Path

import nextflow.config.control.ConfigParser
import nextflow.script.control.ParanoidWarning
import nextflow.script.control.ScriptParser
import org.codehaus.groovy.control.SourceUnit
import org.codehaus.groovy.control.messages.SyntaxErrorMessage

final strict = args.contains('-strict')
final roots = args.findAll { arg -> arg != '-strict' }
if( !roots ) {
    System.err.println 'Give the files or folders to lint.'
    System.exit(2)
}

// the folders Nextflow itself leaves out, plus virtual environments and run outputs; nf-test.config is nf-test's
// own file, in its own syntax
final skipped = ['.git', '.nextflow', '.nf-test', 'work', 'node_modules', 'results', '.ci-pipeline', 'nf-test.config'] as Set
final List<Path> files = []
roots.each { root ->
    final start = Path.of(root)
    if( Files.isRegularFile(start) ) {
        files << start.toAbsolutePath().normalize()
        return
    }
    Files.walk(start).withCloseable { stream ->
        stream.filter { path -> Files.isRegularFile(path) && (path.toString().endsWith('.nf') || path.toString().endsWith('.config')) }
            .filter { path -> !start.relativize(path).any { part -> part.toString() in skipped || part.toString().startsWith('.venv') } }
            .forEach { path -> files << path.toAbsolutePath().normalize() }
    }
}

final scriptParser = new ScriptParser()
final configParser = new ConfigParser()
final here = Path.of('').toAbsolutePath()
files.unique().sort().each { path ->
    if( path.toString().endsWith('.nf') )
        scriptParser.parse(path.toFile())
    else
        configParser.parse(path.toFile())
}
scriptParser.analyze()
configParser.analyze()

int errors = 0
int warnings = 0
// an included file is analysed once more under the path its includer names: report each file once
final Map<String, SourceUnit> sources = [:]
(scriptParser.compiler().getSources().values() + configParser.compiler().getSources().values()).each { SourceUnit source ->
    sources.putIfAbsent(Path.of(source.getName()).toAbsolutePath().normalize().toString(), source)
}
sources.keySet().sort().each { String name ->
    final source = sources[name]
    final shown = here.relativize(Path.of(name))
    final collector = source.getErrorCollector()
    (collector.getErrors() ?: []).findAll { message -> message instanceof SyntaxErrorMessage }.each { message ->
        final cause = ((SyntaxErrorMessage) message).getCause()
        println "ERROR ${shown}:${cause.getStartLine()}:${cause.getStartColumn()}: ${cause.getOriginalMessage()}"
        errors += 1
    }
    (collector.getWarnings() ?: []).findAll { warning -> !(warning instanceof ParanoidWarning) }.each { warning ->
        final context = warning.getContext()
        println "WARN  ${shown}:${context?.getStartLine()}:${context?.getStartColumn()}: ${warning.getMessage()}"
        warnings += 1
    }
}
// deprecations the 25.04 parsers accept but the strict syntax of 26.04 rejects or warns about
final deprecated = [
    [~/\bChannel\./, 'use `channel.` (lower case): `Channel.` is deprecated'],
    [~/\{[^{}>]*?\bit\b/, 'name the closure parameter: the implicit `it` is deprecated'],
    [~/^\s*when:\s*$/, '`when:` is deprecated: filter the input channel instead'],
    [~/configProcessNamesValidation/, '`nextflow.enable.configProcessNamesValidation` is deprecated: remove it'],
]
files.each { Path path ->
    path.readLines().eachWithIndex { String line, int index ->
        final code = line.replaceAll(/\/\/.*$/, '')  // not in comments
        deprecated.each { pattern, why ->
            if( code =~ pattern ) {
                println "WARN  ${here.relativize(path)}:${index + 1}: ${why}"
                warnings += 1
            }
        }
    }
}

println "Linted ${files.size()} files: ${errors} error(s), ${warnings} warning(s)"
System.exit(errors || (strict && warnings) ? 1 : 0)
