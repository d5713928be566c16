#!/bin/busybox sh
# /init of Flotilla's guest initramfs: load the virtio drivers, configure QEMU's
# user-mode network, install the SSH key from the kernel command line into the disk and
# switch to it. flotilla.probe=1 only reports that the kernel came up (the qemu
# backend's KVM probe) and powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
key=
probe=
for a in $(cat /proc/cmdline); do
  case $a in
    flotilla.key=*) key=${a#flotilla.key=} ;;
    flotilla.probe=1) probe=1 ;;
  esac
done
if [ -n "$probe" ]; then
  echo "flotilla-probe-ok" > /dev/console
  poweroff -f
fi
for m in @MODULES@; do
  insmod /lib/modules/$m.ko || echo "flotilla: insmod $m failed" > /dev/console
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
if ! mount -t ext4 /dev/vda /newroot; then
  echo "flotilla: cannot mount /dev/vda" > /dev/console
  poweroff -f
fi
mkdir -p /newroot/root/.ssh
echo "$key" | base64 -d > /newroot/root/.ssh/authorized_keys
chmod 700 /newroot/root/.ssh
chmod 600 /newroot/root/.ssh/authorized_keys
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/busybox init
