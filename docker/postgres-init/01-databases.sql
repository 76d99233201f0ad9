-- Runs once, when the PostgreSQL data volume is empty (docker-entrypoint-initdb.d), as POSTGRES_USER,
-- who therefore owns both databases. Optuna and MLflow create their own tables on first use.
CREATE DATABASE optuna;
CREATE DATABASE mlflow;
