"""What the tests share: real process groups, injected faults, small scene trees, models."""
