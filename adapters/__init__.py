"""Payment-system adapters: the contract, the registry, the conformance kit, built-in adapters."""
