SELECT (SELECT count(*) FROM {missions}), (SELECT count(*) FROM {agents})
