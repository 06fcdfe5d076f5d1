// rxsentry default YARA pack (our own rules).
// A server-side page that runs what a request hands it: a web shell.
rule webshell_request_to_exec
{
    meta:
        title = "Web Shell: Request Parameter Passed to a Command or Eval"
        author = "rxsentry"
        level = "critical"
        attack = "T1505.003,T1059"
    strings:
        $php = "<?php" nocase
        $php_short = "<?=" 
        $exec = /\b(system|exec|passthru|shell_exec|popen|proc_open|eval|assert)\s*\(\s*(base64_decode\s*\(\s*)?\$_(GET|POST|REQUEST|COOKIE|SERVER)\s*\[/ nocase
        $jsp = /Runtime\.getRuntime\(\)\.exec\(\s*request\.getParameter\(/
    condition:
        filesize < 2MB and ((($php or $php_short) and $exec) or $jsp)
}
