"""Flow: the study state sequencer (pipeline), worker queue, scheduler, composition root, operator actions, retention."""
