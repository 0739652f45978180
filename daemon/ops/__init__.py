"""Operations: the admin HTTP service, reports, health, status, monitoring, retention, admin actions, systemd notification."""
