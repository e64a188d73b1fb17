# Load the kernel modules matching the devices present, udev-style but without udev: busybox modprobe
# matches every device's modalias against the image's modules.alias and loads the module with its
# dependencies from modules.dep. Rounds repeat while they load something, because a bus driver
# (virtio_pci, ahci) makes new devices (virtio0, sda) appear.

load_drivers() {
    _seen=""
    for _round in 1 2 3 4; do
        _aliases=$(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u)
        [ "$_aliases" = "$_seen" ] && break
        _seen=$_aliases
        # shellcheck disable=SC2086  # one argument per alias
        modprobe -q -a $_aliases 2>/dev/null
        read -r _up _ </proc/uptime
        echo "$_up round $_round: $(cut -d ' ' -f 1 /proc/modules | tr '\n' ' ')" >>/run/kiln-modules.log
    done
    # /dev/ipmi0 comes from ipmi_devintf, which no device alias names
    grep -q '^ipmi_si ' /proc/modules && modprobe -q ipmi_devintf
}
