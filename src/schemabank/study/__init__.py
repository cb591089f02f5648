"""The research study around the method: everything that reads, checks, compares or times runs
rather than trains or evaluates one.

- :mod:`.figures` and :mod:`.document`: ``schemabank report``, the matplotlib figures of a run
  and the Markdown report that links them;
- :mod:`.table`: ``schemabank table``, the results table of the study and its selection rule;
- :mod:`.verify`: ``schemabank verify``, a run's results against the recorded ``expected/*.yaml``;
- :mod:`.compare`: ``schemabank compare``, paired comparison of runs on the same problems;
- :mod:`.sweep`: ``schemabank sweep``, many training runs at a time on one machine;
- :mod:`.bench`: ``schemabank bench``, the throughput benchmark against plain PEFT;
- :mod:`.probe`: linear probes of the tags in the frozen model's hidden states
  (``scripts/probe_tags.py``).

The method itself (bank, router, attaching, training stages, evaluation) lives one level up and
imports nothing from here; only the CLI (:mod:`schemabank.cli`) does.
"""
