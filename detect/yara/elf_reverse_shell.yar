// rxsentry default YARA pack (our own rules).
// An ELF binary carrying a reverse-shell command: a dropper or implant that
// spawns a shell wired to a socket.
rule elf_reverse_shell_string
{
    meta:
        title = "ELF Binary With an Embedded Reverse-Shell Command"
        author = "rxsentry"
        level = "critical"
        attack = "T1059.004,T1095"
    strings:
        $dev_tcp = /(ba|z|k)?sh -i\s*[>&]{1,3}\s*\/dev\/(tcp|udp)\//
        $nc_e = /\b(nc|ncat|netcat)(\.\w+)? [^\x00\n]{0,64}-e \/bin\/(ba)?sh/
        $socat = /socat [^\x00\n]{0,64}exec:['"]?\/bin\/(ba)?sh/ nocase
        $mkfifo = /mkfifo [^\x00\n]{1,64}; ?(ba)?sh -i? ?<[^\x00\n]{1,64}\|\s*(nc|ncat) /
    condition:
        uint32(0) == 0x464c457f and any of them
}
