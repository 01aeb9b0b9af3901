"""The plug-in API: what a learner imports (the `Learner` base, its data types, the run
context, losses, optimizer helpers and shared learner pieces). Depends only on `models`,
`data` types and `errors`; nothing here imports the engine."""
