"""faust-streaming app and agents. Agents decode, call a service, emit; the
logic they call lives in plain classes under ``services``."""
