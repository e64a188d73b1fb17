# Load the kernel modules matching the devices present, udev-style but without udev: every device's
# modalias is matched against the aliases of the modules in the image (lib/modules/kiln.alias, glob
# patterns), and a matching module is loaded with its dependencies (lib/modules/kiln.dep, in order).
# Three rounds, because loading a bus driver (virtio_pci, ahci) makes new devices (virtio0, sda) appear.

_kiln_loaded=" "

load_module() {
    case "$_kiln_loaded" in *" $1 "*) return 0 ;; esac
    _line=$(grep "^$1 " /lib/modules/kiln.dep) || return 1
    for _ko in ${_line#* }; do
        insmod "$_ko" 2>/dev/null
    done
    _kiln_loaded="$_kiln_loaded$1 "
}

matching_modules() {
    # Patterns are bucketed by their first 14 characters (e.g. "pci:v00008086d") when those hold no
    # wildcard, so each device is tested against a few patterns instead of all of them.
    cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u | awk '
        FNR == NR {
            p = $1; key = substr(p, 1, 14)
            if (key ~ /[*?[]/) key = "*"
            r = p; gsub(/\./, "\\.", r); gsub(/\*/, ".*", r); gsub(/\?/, ".", r)
            n[key]++; re[key, n[key]] = "^" r "$"; mod[key, n[key]] = $2
            next
        }
        {
            split(substr($0, 1, 14) " *", keys, " ")
            for (k = 1; k <= 2; k++) {
                key = keys[k]
                for (i = 1; i <= n[key]; i++)
                    if ($0 ~ re[key, i] && !(mod[key, i] in seen)) { seen[mod[key, i]] = 1; print mod[key, i] }
            }
        }' /lib/modules/kiln.alias -
}

load_drivers() {
    for _round in 1 2 3; do
        _before="$_kiln_loaded"
        for _m in $(matching_modules); do
            load_module "$_m"
        done
        [ "$_before" = "$_kiln_loaded" ] && break
    done
    # /dev/ipmi0 comes from ipmi_devintf, which no device alias names
    case "$_kiln_loaded" in *" ipmi_si "*) load_module ipmi_devintf ;; esac
}
