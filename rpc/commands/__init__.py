"""The subcommands of `mavail` that talk to the engine for people: pull, ls, ps, show, rm, verify, repair, cleanup, config, logs."""
