"""`python -m benchmarks`: regenerate `benchmarks/RESULTS.md` (see `benchmarks.run_all`)."""

from benchmarks.run_all import main

raise SystemExit(main())
