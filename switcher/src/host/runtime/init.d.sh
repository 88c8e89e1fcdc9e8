#!/bin/sh
### BEGIN INIT INFO
# Provides:          ferry-@SERVICE@
# Required-Start:    $network $remote_fs $syslog
# Required-Stop:     $network $remote_fs $syslog
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: supervisord for @SERVICE@ (ferry)
# Description:       The service's own supervisord, which runs its programs
#                    from @DIR@/current.
### END INIT INFO
# Written by ferry setup; changes here are overwritten. Install it with
# `ferry setup STAGE --install`, or as root:
#   cp this file /etc/init.d/ && update-rc.d ferry-@SERVICE@ defaults
# Exit codes are LSB's: status says 0 running, 1 dead with its pid file
# left, 3 not running; start says 6 when there is nothing to run yet.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
NAME=ferry-@SERVICE@
DIR=@QDIR@
CONF="$DIR/.ferry/supervisord.conf"
PIDFILE="$DIR/.ferry/supervisord.pid"

# The pid of this deploy directory's supervisord, when it runs (its pid
# file names a live supervisord): one ferry started is found too.
running() {
	[ -s "$PIDFILE" ] || return 1
	p=$(cat "$PIDFILE" 2>/dev/null) || return 1
	case "$p" in '' | *[!0-9]*) return 1 ;; esac
	[ -r "/proc/$p/cmdline" ] || return 1
	case "$(tr '\0' ' ' <"/proc/$p/cmdline")" in
		*supervisord*) echo "$p" ;;
		*) return 1 ;;
	esac
}

# Runs a command as the deploy directory's owner (supervisord and the
# programs run as the user who deploys, also when root starts them at boot).
as_owner() {
	owner=$(stat -c %U "$DIR") || return 1
	if [ "$(id -u)" = 0 ] && [ "$owner" != root ]; then
		runuser -u "$owner" -- "$@"
	else
		"$@"
	fi
}

start() {
	if p=$(running); then
		echo "$NAME: supervisord runs already (pid $p)"
		return 0
	fi
	if [ ! -e "$DIR/current" ] || [ ! -r "$CONF" ]; then
		echo "$NAME: nothing to start: no release is current in $DIR (deploy one with ferry push)" >&2
		return 6
	fi
	cd "$DIR" || return 1
	as_owner supervisord -c "$CONF" || return 1
	i=0
	until as_owner supervisorctl -c "$CONF" pid >/dev/null 2>&1; do
		i=$((i + 1))
		if [ "$i" -gt 100 ]; then
			echo "$NAME: supervisord did not answer on its socket in 10 s; see $DIR/shared/log/supervisord.log" >&2
			return 1
		fi
		sleep 0.1
	done
	echo "$NAME: started supervisord (pid $(running))"
}

stop() {
	if ! p=$(running); then
		echo "$NAME: supervisord is not running"
		return 0
	fi
	as_owner supervisorctl -c "$CONF" shutdown >/dev/null 2>&1 || kill "$p" 2>/dev/null
	i=0
	while kill -0 "$p" 2>/dev/null; do
		i=$((i + 1))
		if [ "$i" -gt 600 ]; then
			echo "$NAME: supervisord (pid $p) did not stop in 60 s" >&2
			return 1
		fi
		sleep 0.1
	done
	echo "$NAME: stopped supervisord (pid $p) and its programs"
}

status() {
	if p=$(running); then
		echo "$NAME: supervisord is running (pid $p)"
		as_owner supervisorctl -c "$CONF" status
		return 0
	fi
	if [ -s "$PIDFILE" ]; then
		echo "$NAME: supervisord is not running, but its pid file $PIDFILE is left"
		return 1
	fi
	echo "$NAME: supervisord is not running"
	return 3
}

case "$1" in
	start) start ;;
	stop) stop ;;
	restart | force-reload) stop && start ;;
	reload)
		if running >/dev/null; then
			as_owner supervisorctl -c "$CONF" update
		else
			echo "$NAME: supervisord is not running" >&2
			exit 7
		fi
		;;
	status) status ;;
	*)
		echo "usage: $0 {start|stop|restart|reload|force-reload|status}" >&2
		exit 2
		;;
esac
exit $?
