"""Cost control: prices, budgets, rate limits, and the counters that keep them exact."""
