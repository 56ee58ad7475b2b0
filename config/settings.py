"""Arbiter settings: one module, every value from the environment, defaults that run on SQLite.

See docs/settings.md for the full list. Nothing here is computed from anything but the environment.
"""

import os
from pathlib import Path

import dj_database_url


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_list(name: str, default: str = "") -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
# Without SECRET_KEY a development key is used; `check --deploy` flags it, and production must set one.
SECRET_KEY = os.environ.get("SECRET_KEY", "dev-insecure-arbiter-key-set-SECRET_KEY-in-production")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "axes",
    "django_tasks",
    "django_tasks_db",
    "annotate",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A database outage (PostgreSQL restarting) answers 503 with a reason and Retry-After, never a 500.
    "annotate.middleware.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes requires: it turns locked-out logins into 429 pages.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'arbiter.sqlite3'}")
DATABASES = {
    # Persistent connections: a request must not pay for a new connection (see bench/serve.py).
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("CONN_MAX_AGE", 60), conn_health_checks=True)
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The same backend with a health check that asks the socket, not the server (no SELECT 1 per request).
    DATABASES["default"]["ENGINE"] = "config.postgresql"
    # Prepared statements for the next-task / submit statements, which it runs through server-side binding
    # (annotate/sql.py): PG_PREPARE=0 turns them off, e.g. behind PgBouncer before 1.21 in transaction mode.
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 1 if env_bool("PG_PREPARE", True) else None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take SQLite's write lock at BEGIN, so two writers queue up instead of one
    # failing with "database is locked" when it tries to upgrade a read lock; WAL lets readers run meanwhile.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# django-axes: lock a username+IP pair out after AXES_FAILURE_LIMIT failed logins, for AXES_COOLOFF_MINUTES.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_MINUTES", 15) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

# --- Security (production switches; `manage.py check --deploy` is clean with HTTPS=1 and a SECRET_KEY) ---
HTTPS = env_bool("HTTPS", False)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = 31536000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

# --- Static files: served by the app itself (whitenoise), so `make run` works with DEBUG off ---------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- API ------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "annotate.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Arbiter API",
    "DESCRIPTION": "Preference annotation, agreement, export and training. Token or session auth.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a "kind" or "status": name each choice set, so the schema (and `check --deploy`) is clean.
    "ENUM_NAME_OVERRIDES": {
        "ProjectKindEnum": "annotate.models.Kind",
        "TaskStatusEnum": "annotate.models.Task.Status",
        "MembershipStatusEnum": "annotate.models.Membership.Status",
        "RunKindEnum": "training.kinds.choices",
        "RunStatusEnum": "training.models.RunStatus",
        "ArtifactKindEnum": "training.models.ArtifactKind",
    },
}

# --- Jobs: Django Tasks with the database backend; `python manage.py db_worker` serves the queue ----
# The queue training tasks go to (docs/training.md); a GPU host may serve only it (`db_worker --queue-name training`).
TRAINING_QUEUE = os.environ.get("TRAINING_QUEUE", "default")
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": sorted({"default", TRAINING_QUEUE})}}

# --- Arbiter --------------------------------------------------------------------------------------
ARTIFACT_ROOT = Path(os.environ.get("ARTIFACT_ROOT", BASE_DIR / "artifacts"))
MODEL_ROOTS = [Path(p) for p in env_list("MODEL_ROOTS", str(BASE_DIR / "models"))]
# How long an annotator holds a task before it returns to the pool (a project may override it).
ARBITER_LEASE_SECONDS = env_int("ARBITER_LEASE_SECONDS", 30 * 60)
# Imports are refused whole above these limits, before any parsing.
ARBITER_IMPORT_MAX_BYTES = env_int("ARBITER_IMPORT_MAX_BYTES", 100 * 1024 * 1024)
ARBITER_IMPORT_MAX_ROWS = env_int("ARBITER_IMPORT_MAX_ROWS", 200_000)
# Vote files (import_judgments) are short rows, and public sets have millions of them.
ARBITER_IMPORT_MAX_VOTES = env_int("ARBITER_IMPORT_MAX_VOTES", 2_000_000)
# A longer line (JSONL row, CSV record line), or JSON nested deeper, is refused before it is parsed.
ARBITER_IMPORT_MAX_LINE_BYTES = env_int("ARBITER_IMPORT_MAX_LINE_BYTES", 4 * 1024 * 1024)
ARBITER_IMPORT_MAX_DEPTH = env_int("ARBITER_IMPORT_MAX_DEPTH", 32)
ARBITER_IMPORT_MAX_RESPONSES = 9
# Hosts an AI judge's OpenAI-compatible endpoint may be on (docs/ai-feedback.md), comma-separated: "vllm.internal,
# api.openai.com". Empty (the default): no judge calls out at all, so a researcher cannot point the worker at an
# internal address (SSRF).
ARBITER_JUDGE_HOSTS = [host.lower() for host in env_list("ARBITER_JUDGE_HOSTS")]
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# --- Training (docs/training.md): runs are Django Tasks served by `db_worker`, each in a subprocess ---------
# A running run's worker refreshes its heartbeat this often; a heartbeat older than TRAINING_STALE_SECONDS means
# the worker died, and the run is re-queued (resuming from its last checkpoint) or failed, per TRAINING_ON_STALE.
TRAINING_HEARTBEAT_SECONDS = env_int("TRAINING_HEARTBEAT_SECONDS", 5)
TRAINING_STALE_SECONDS = env_int("TRAINING_STALE_SECONDS", 30)
TRAINING_ON_STALE = os.environ.get("TRAINING_ON_STALE", "requeue")  # "requeue" or "fail"
TRAINING_MAX_ATTEMPTS = env_int("TRAINING_MAX_ATTEMPTS", 3)
# After a cancel, the subprocess gets this long to exit on SIGTERM before SIGKILL.
TRAINING_CANCEL_GRACE_SECONDS = env_int("TRAINING_CANCEL_GRACE_SECONDS", 3)
# The test split of the snapshot a run makes when none is given (prompts held out for accuracy).
TRAINING_DEFAULT_TEST_SIZE = float(os.environ.get("TRAINING_DEFAULT_TEST_SIZE", "0.1"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}
