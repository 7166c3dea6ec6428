#!/usr/bin/env python3
"""Records what NVML answers on GPU 0, straight through its C API (ctypes;
nothing to install but the driver, and torch for the process check). Prints
one JSON object: every value is [NVML return code, value]; 0 is SUCCESS, 3
NOT_SUPPORTED, 6 NOT_FOUND, 7 INSUFFICIENT_SIZE. Not run by CI: it is how
src/gpu/fixtures/h200x8-driver580.json was recorded (output beside this file)."""
import ctypes as C
import json
import subprocess
import time

nvml = C.CDLL("libnvidia-ml.so.1")
out = {}
call = lambda name, *args: getattr(nvml, name)(*args)  # noqa: E731
ref = C.byref
call("nvmlInit_v2")
buf = C.create_string_buffer(96)
call("nvmlSystemGetDriverVersion", buf, 96)
out["driver"] = buf.value.decode()
dev = C.c_void_p()
call("nvmlDeviceGetHandleByIndex_v2", 0, ref(dev))


class Memory(C.Structure):  # nvmlMemory_t (v1): used includes the driver's reserve
    _fields_ = [("total", C.c_ulonglong), ("free", C.c_ulonglong), ("used", C.c_ulonglong)]


mem = Memory()
call("nvmlDeviceGetMemoryInfo", dev, ref(mem))
out["mem"] = [mem.total, mem.free, mem.used]
u, q = C.c_uint(), C.c_ulonglong()
for key, name, extra in [
    ("fan", "nvmlDeviceGetFanSpeed", ()),
    ("temp", "nvmlDeviceGetTemperature", (0,)),
    ("power", "nvmlDeviceGetPowerUsage", ()),
    ("limit", "nvmlDeviceGetEnforcedPowerLimit", ()),
    ("retired", "nvmlDeviceGetRetiredPagesPendingStatus", ()),
]:
    out[key] = [call(name, dev, *extra, ref(u)), u.value]
for key, kind in [("ecc_unc", 1), ("ecc_cor", 0)]:
    out[key] = [call("nvmlDeviceGetTotalEccErrors", dev, kind, 1, ref(q)), q.value]
out["events"] = [call("nvmlDeviceGetSupportedEventTypes", dev, ref(q)), q.value]
rows = [C.c_uint() for _ in range(4)]  # corrected, uncorrected, pending, failure
out["remap"] = [call("nvmlDeviceGetRemappedRows", dev, *map(ref, rows))] + [r.value for r in rows]


def process_utilization():
    count = C.c_uint(0)
    return [call("nvmlDeviceGetProcessUtilization", dev, None, ref(count), C.c_ulonglong(0)), count.value]


class Process(C.Structure):  # nvmlProcessInfo_t (v2)
    _fields_ = [("pid", C.c_uint), ("used", C.c_ulonglong), ("gi", C.c_uint), ("ci", C.c_uint)]


def processes():
    count, arr = C.c_uint(8), (Process * 8)()
    rc = call("nvmlDeviceGetComputeRunningProcesses_v3", dev, ref(count), arr)
    return [rc] + [(arr[i].pid, arr[i].used) for i in range(count.value)]


out["putil_idle"] = process_utilization()
child = subprocess.Popen(
    ["python3", "-c", "import torch,time;x=torch.ones(2<<30,dtype=torch.uint8,device='cuda');"
     "print(x.sum().item(),flush=True);time.sleep(60)"],
    stdout=subprocess.PIPE,
)
child.stdout.readline()
time.sleep(2)
out["child"] = child.pid
out["nspid"] = [l for l in open(f"/proc/{child.pid}/status") if l.startswith("NSpid")][0].split()[1:]
out["procs"] = processes()
out["putil_busy"] = process_utilization()
call("nvmlDeviceGetMemoryInfo", dev, ref(mem))
out["mem_busy"] = [mem.total, mem.free, mem.used]
out["smi"] = subprocess.run(
    ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"], capture_output=True
).stdout.decode()
child.kill()
print(json.dumps(out))
