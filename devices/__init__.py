"""Board profiles, inventory, provisioning and simulated fleets (see docs)."""
