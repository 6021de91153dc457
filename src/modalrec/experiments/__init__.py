"""Experiments: benchmark tables with significance tests, ablations, sensitivity sweeps and tuning.

By job: :mod:`.entries` (a table's rows) and :mod:`.plans` (rows from a YAML plan); :mod:`.store`
(the results store of a report folder); :mod:`.trials` (one trial, run by every executor) and
:mod:`.executors` (where trials run); :mod:`.campaign` (the driver, :class:`~.campaign.Experiment`);
:mod:`.tables`, :mod:`.significance` and :mod:`.table_report` (the table report); the commands
:mod:`.benchmark`, :mod:`.ablate`, :mod:`.sweep` and :mod:`.tune` (with :mod:`.search_space`,
:mod:`.study`, :mod:`.tune_trial` and :mod:`.tune_report`); :mod:`.adopt` and :mod:`.rankers`.
"""
