# Load the kernel modules matching the devices present, udev-style but without udev: busybox modprobe
# matches every device's modalias against the image's modules.alias and loads the module with its
# dependencies from modules.dep. Rounds repeat while they load something, because a bus driver
# (virtio_pci, ahci) makes new devices (virtio0, sda) appear.

# load_drivers [net]: with "net", only the boot NIC's drivers: network-class PCI devices (bc02) and
# virtio network devices (virtio:d00000001), so the agent can start DHCP while the rest loads.
load_drivers() {
    _seen=""
    for _round in 1 2 3 4; do
        if [ "$1" = net ]; then
            _aliases=$(cat /sys/bus/*/devices/*/modalias 2>/dev/null | grep -e 'bc02' -e '^virtio:d00000001v' | sort -u)
        else
            _aliases=$(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u)
        fi
        [ "$_aliases" = "$_seen" ] && break
        _seen=$_aliases
        # shellcheck disable=SC2086  # one argument per alias
        modprobe -q -a $_aliases 2>/dev/null
        read -r _up _ </proc/uptime
        echo "$_up ${1:-all} round $_round: $(cut -d ' ' -f 1 /proc/modules | tr '\n' ' ')" >>/run/kiln-modules.log
    done
    # /dev/ipmi0 comes from ipmi_devintf, which no device alias names
    grep -q '^ipmi_si ' /proc/modules && modprobe -q ipmi_devintf
}
