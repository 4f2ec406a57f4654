"""Read every cloud of an HDF5 file into numpy arrays with h5py, timed.

Usage: python3 load_h5py.py FILE.h5
Prints one JSON line: seconds, clouds, points, and the peak resident memory in KiB.
"""

import json
import resource
import sys
import time

import h5py


def main():
    start = time.perf_counter()
    with h5py.File(sys.argv[1], "r") as f:
        clouds = [f[name][()] for name in f]
    seconds = time.perf_counter() - start
    points = sum(len(c) for c in clouds)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "clouds": len(clouds), "points": points, "peak_kib": peak_kib,
                      "h5py": h5py.__version__}))


if __name__ == "__main__":
    main()
