"""Where the quantum layer's circuit runs: simulators and IBM Runtime QPUs."""
