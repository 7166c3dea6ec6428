#!/bin/busybox sh
# PID 1 of the VM: mounts what a container host has, makes the cgroup
# /container (every controller offered), starts aikore as PID 1 of a
# container in it (bin/container), then checks what the kernel applied.
# Prints `PASS name` / `FAIL name: why` lines and `RESULT p passed, f failed`.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
echo "VM: kernel $(uname -r); cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "+memory +cpu +cpuset +io +pids" > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/container
# Listeners for IPAddressAllow=/IPAddressDeny=: one on localhost, one on another local address.
ip addr add 10.9.9.9/32 dev lo
mkdir -p /tmp/www
httpd -p 127.0.0.1:8082 -h /tmp/www && httpd -p 10.9.9.9:8081 -h /tmp/www
export AIKORE_API_TOKEN=vmtoken AIKORE_URL=http://127.0.0.1:9000 AIKORE_LOG=info HOME=/root PATH=/bin
# A client call that gets no answer fails (and the check with it) instead of hanging the VM.
export AIKORE_CLIENT_TIMEOUT=20
container /bin/aikore serve --data-dir /data --units-dir /units --listen 127.0.0.1:9000 > /tmp/daemon.log 2>&1 &

passed=0; failed=0
check() { # name, condition (shell), detail
  if eval "$2"; then echo "PASS $1"; passed=$((passed + 1)); else echo "FAIL $1: $3"; failed=$((failed + 1)); fi
}
# By the clock, not by tries: under a slow TCG one try can take seconds.
wait_for() { # condition, seconds
  end=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt $end ]; do eval "$1" && return 0; sleep 0.5; done; return 1
}
# What a hang looks like from inside, printed before the VM gives up.
dump() {
  echo "--- daemon log ($(wc -c < /tmp/daemon.log) bytes)"; tail -n 60 /tmp/daemon.log
  echo "--- uptime $(cat /proc/uptime), load $(cat /proc/loadavg)"
  echo "--- user processes: pid, state, wait channel, command"
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' < $d/cmdline 2>/dev/null | cut -c1-90)
    [ -n "$cmd" ] && echo "${d#/proc/} $(cut -d' ' -f3 $d/stat 2>/dev/null) $(cat $d/wchan 2>/dev/null) $cmd"
  done
  for t in /proc/$(pidof aikore | awk '{print $NF}')/task/*; do
    echo "--- aikore thread ${t##*/} $(cat $t/comm 2>/dev/null): $(cut -d' ' -f3 $t/stat 2>/dev/null) $(cat $t/wchan 2>/dev/null)"
  done
  # Tasks blocked in the kernel (D state), with their stacks.
  echo w > /proc/sysrq-trigger; echo "--- blocked tasks"; dmesg | sed -n '/Show Blocked State/,$p' | tail -n 80
  for f in /data/logs/*; do echo "--- $f"; tail -n 10 "$f"; done
}
# The host gives the VM 600 s; well before that, say what is stuck and end.
(sleep 420; echo "FAIL watchdog: the checks did not finish in 420 s"; dump; echo "RESULT 0 passed, 1 failed"; poweroff -f) &
watchdog=$!
started=$(date +%s)
wait_for 'wget -qO /tmp/health http://127.0.0.1:9000/healthz 2>/dev/null' 60
check daemon_is_pid1_with_cgroups 'grep -q "\"pid1\":true" /tmp/health && grep -q "\"tracking\":\"cgroup\"" /tmp/health' "$(cat /tmp/health)"
wait_for 'aikore status hog | grep -q "failure: *oom-kill"' 60
wait_for 'aikore status weighed | grep -q "status: *started"' 30

C=/sys/fs/cgroup/container
check container_cgroup_has_no_process '[ -z "$(cat $C/cgroup.procs)" ]' "left in /container: $(cat $C/cgroup.procs | tr '\n' ' ')"
check daemon_moved_to_its_leaf '[ -n "$(cat $C/aikore-*-daemon/cgroup.procs 2>/dev/null)" ]' "$(ls $C)"
for c in memory cpu cpuset io pids; do
  check "controller_${c}_enabled" 'grep -qw $c $C/cgroup.subtree_control && grep -qw $c $(ls -d $C/aikore-*[0-9a-f])/cgroup.subtree_control' "$(cat $C/cgroup.subtree_control)"
done

hog=$(aikore status hog)
check memory_max_ends_oom_kill 'echo "$hog" | grep -q "failure: *oom-kill"' "$hog"
check neighbour_keeps_running 'aikore status neighbour | grep -q "status: *started"' "$(aikore status neighbour)"
metrics=$(wget -qO- --header "Authorization: Bearer vmtoken" http://127.0.0.1:9000/metrics)
check oom_kill_counted 'echo "$metrics" | grep -q "aikore_unit_failures_total{class=\"oom-kill\",unit=\"hog\"} 1"' "$(echo "$metrics" | grep failures_total)"

W=$(ls -d $C/aikore-*[0-9a-f]/weighed)
for pair in pids.max=17 cpu.weight=42 "cpu.max=50000 100000" memory.high=100663296 memory.max=134217728 memory.swap.max=0 cpuset.cpus=0 "io.weight=default 300"; do
  f=${pair%%=*}; want=${pair#*=}
  check "weighed_$f" '[ "$(cat $W/$f)" = "$want" ]' "$(cat $W/$f 2>&1) != $want"
done
check tasks_max_stops_a_fork 'grep -q "can.t fork" /data/logs/forker.log' "$(cat /data/logs/forker.log)"

for p in $(pidof sleep); do grep -q "Max open files *1234 *5678" /proc/$p/limits && L=$p; done
check limit_nofile_in_proc '[ -n "$L" ]' "no sleep with LimitNOFILE=1234:5678"
check no_new_privs_in_proc 'grep -q "NoNewPrivs:.1" /proc/$L/status' "$(grep NoNewPrivs /proc/$L/status)"
# /proc/<pid>/root resolves paths through the unit's own mounts.
check protect_system_strict_is_read_only '! touch /proc/$L/root/aikore-probe 2>/dev/null' "/ is writable in the unit"
check private_tmp_hides_the_hosts '[ -e /tmp/daemon.log ] && [ ! -e /proc/$L/root/tmp/daemon.log ]' "$(ls /proc/$L/root/tmp)"

# OOMPolicy= (issue 14): a worker OOM-killed while the main process lives stops the unit (the default, stop),
# kills all of it (kill: memory.oom.group=1) or neither (continue).
wait_for 'aikore status oomstop | grep -q "failure: *oom-kill"' 60
check oom_policy_stop_stops_the_unit 'aikore status oomstop | grep -q "status: *error"' "$(aikore status oomstop)"
wait_for 'grep -q "OOMPolicy=continue" /data/logs/oomcontinue.log' 60
check oom_policy_continue_keeps_it_running 'aikore status oomcontinue | grep -q "status: *started"' "$(aikore status oomcontinue; cat /data/logs/oomcontinue.log)"
wait_for 'aikore status oomkill | grep -q "failure: *oom-kill"' 60
check oom_policy_kill_ends_the_whole_unit 'aikore status oomkill | grep -q "status: *error" && ! grep -q "oom.group not set" /data/logs/oomkill.log' "$(aikore status oomkill; cat /data/logs/oomkill.log)"
# DevicePolicy=/DeviceAllow=, IPAddressAllow=/IPAddressDeny=, Delegate= (cgroup BPF programs and delegation).
L=/data/logs
wait_for 'grep -q fenced-done $L/fenced.log && grep -q delegated-done $L/delegated.log && grep -q "/dev/null:" $L/devstrict.log' 30
check kmsg_readable_outside_a_unit '[ "$(dd if=/dev/kmsg bs=8192 count=1 2>/dev/null | wc -c)" -gt 0 ]' "the VM's init cannot read /dev/kmsg"
check device_closed_writes_dev_null 'grep -q null-written $L/devclosed.log' "$(cat $L/devclosed.log)"
check device_closed_keeps_pseudo_devices 'grep -qx 1 $L/devclosed.log' "$(cat $L/devclosed.log)"
check device_closed_refuses_kmsg 'grep -q "/dev/kmsg: Operation not permitted" $L/devclosed.log' "$(cat $L/devclosed.log)"
check device_allow_read_only_reads 'grep -q "zero-read 3" $L/devstrict.log' "$(cat $L/devstrict.log)"
check device_allow_read_only_refuses_write 'grep -q "can.t create /dev/zero: Operation not permitted" $L/devstrict.log' "$(cat $L/devstrict.log)"
check device_strict_refuses_dev_null 'grep -q "can.t create /dev/null: Operation not permitted" $L/devstrict.log' "$(cat $L/devstrict.log)"
check listener_reachable_outside_a_unit 'connect 10.9.9.9 8081 | grep -q "tcp 10.9.9.9 ok"' "$(connect 10.9.9.9 8081)"
check ip_allow_localhost_connects 'grep -q "tcp 127.0.0.1 ok" $L/fenced.log && grep -q "udp 127.0.0.1 ok" $L/fenced.log' "$(cat $L/fenced.log)"
check ip_deny_any_refuses_another_address 'grep -q "tcp 10.9.9.9 timed out" $L/fenced.log && grep -q "udp 10.9.9.9 Operation not permitted" $L/fenced.log' "$(cat $L/fenced.log)"
ipline=$(aikore status fenced | grep "ip:")
check ip_accounting_in_status 'echo "$ipline" | grep -q "in ([1-9][0-9]* packets), .* out ([1-9][0-9]* packets)"' "$ipline"
ipm=$(wget -qO- --header "Authorization: Bearer vmtoken" http://127.0.0.1:9000/metrics | grep "aikore_unit_ip_packets_total.*fenced")
check ip_accounting_in_metrics 'echo "$ipm" | grep -q "direction=.egress.*} [1-9]"' "$ipm"
D=$(ls -d $C/aikore-*[0-9a-f])/delegated
check delegate_hands_the_cgroup_to_user '[ "$(stat -c %U $D $D/cgroup.procs $D/cgroup.subtree_control $D/cgroup.threads | sort -u)" = nobody ]' "$(ls -l $D | head -5)"
check delegated_unit_moved_into_its_child '[ "$(wc -l < $D/payload/cgroup.procs)" = 3 ] && [ -z "$(cat $D/cgroup.procs)" ] && grep -qw pids $D/cgroup.subtree_control && grep -q moved $L/delegated.log && grep -q enabled $L/delegated.log' "$(cat $L/delegated.log; cat $D/payload/cgroup.procs)"
sub=$(cat $D/payload/cgroup.procs 2>/dev/null)
aikore stop delegated --wait --timeout 30 > /tmp/stop.out 2>&1
alive=""; for p in $sub; do [ -d /proc/$p ] && alive="$alive $p"; done
check stop_kills_the_delegated_subtree '[ -n "$sub" ] && [ -z "$alive" ]' "still alive:$alive ($(cat /tmp/stop.out))"
check delegated_cgroup_removed '[ ! -d $D ]' "$(ls $D 2>&1 | head -3)"

kill $watchdog 2>/dev/null
[ $failed -eq 0 ] || dump
echo "VM: the checks took $(($(date +%s) - started)) s"
echo "RESULT $passed passed, $failed failed"
poweroff -f
