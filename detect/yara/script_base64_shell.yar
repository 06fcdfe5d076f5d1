// rxsentry default YARA pack (our own rules).
// A script that decodes base64 straight into a shell: the usual way a
// dropper hides its second stage from a casual look.
rule script_base64_into_shell
{
    meta:
        title = "Script Piping Decoded Base64 Into a Shell"
        author = "rxsentry"
        level = "high"
        attack = "T1027,T1140,T1059.004"
    strings:
        $decode_pipe = /base64 +(-d|--decode|-D)[^\n|]{0,80}\| *(sudo +)?(\/usr)?(\/bin\/)?(ba|da|z|k)?sh\b/
        $pipe_decode = /\| *base64 +(-d|--decode|-D) *\| *(sudo +)?(\/usr)?(\/bin\/)?(ba|da|z|k)?sh\b/
        $python = /python3? +-c +['"][^\n]{0,120}b64decode\([^\n]{0,200}(exec|os\.system|subprocess)/
    condition:
        filesize < 5MB and any of them
}
