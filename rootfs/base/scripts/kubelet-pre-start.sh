#!/bin/bash
# Run by kubelet.service before the kubelet starts: kernel settings the
# kubelet checks at start-up.
modprobe br_netfilter 2>/dev/null || true
sysctl -w net.ipv4.ip_forward=1 >/dev/null 2>&1 || true
sysctl -w net.bridge.bridge-nf-call-iptables=1 >/dev/null 2>&1 || true
swapoff -a 2>/dev/null || true
exit 0
