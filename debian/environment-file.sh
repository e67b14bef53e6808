# victron-poller: the service's environment file, read as systemd reads it.
# Sourced by the maintainer scripts (POSIX sh); defines one function:
#
#   envfile_exec FILE COMMAND [ARG...]
#
# runs COMMAND with only the variables FILE sets (and PATH), as systemd's
# EnvironmentFile= would give them to the service. FILE is parsed, never
# run: it holds secrets (a database password may contain ; $ ` or quotes),
# and nothing in it reaches a shell. A missing or unreadable FILE sets
# nothing (the unit names it with a leading '-': optional).
#
# The rules are systemd 252's (load_env_file): KEY=VALUE lines; blank lines
# and lines starting with # or ; are ignored, as are lines without '='; a
# comment ending in a backslash continues on the next line; whitespace
# around KEY and VALUE is dropped; VALUE may be 'single quoted' (taken as
# is, newlines included) or "double quoted" (where \" \\ \` \$ stand for the
# character, a backslash before a newline joins the lines, and any other
# backslash stays); quoted and unquoted pieces after the first quote join
# up, whitespace between them dropped; outside quotes a backslash takes the
# next character as is (before a newline it joins the lines). A KEY that is
# not a valid name ([A-Za-z_][A-Za-z0-9_]*) is ignored, as systemd ignores
# it; the last of two assignments to one KEY wins.

envfile_exec() {
  _ef_file=$1
  shift
  _ef_n=$#
  set -- "$@" "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  _ef_rest=
  if [ -r "$_ef_file" ]; then
    # The x keeps trailing newlines, which $(...) would drop.
    _ef_rest=$(cat -- "$_ef_file" && printf x) || return 1
    _ef_rest=${_ef_rest%x}
  fi
  _ef_nl='
'
  _ef_cr=$(printf '\r')
  _ef_tab=$(printf '\t')
  _ef_state=pre_key
  _ef_key= _ef_value= _ef_space= _ef_push=
  # One character at a time, through systemd's states; _ef_space holds
  # whitespace that counts only if something other than whitespace follows.
  while [ -n "$_ef_rest" ]; do
    _ef_tail=${_ef_rest#?}
    _ef_c=${_ef_rest%"$_ef_tail"}
    if [ -z "$_ef_c" ]; then
      echo "victron-poller: $_ef_file: cannot be read as text" >&2
      return 1
    fi
    _ef_rest=$_ef_tail
    case $_ef_c in
      "$_ef_nl" | "$_ef_cr") _ef_class=newline ;;
      ' ' | "$_ef_tab") _ef_class=space ;;
      *) _ef_class=other ;;
    esac
    case $_ef_state in
      pre_key)
        case $_ef_class$_ef_c in
          'other#' | 'other;') _ef_state=comment ;;
          other*) _ef_state=key _ef_key=$_ef_c _ef_space= ;;
        esac
        ;;
      key)
        case $_ef_class$_ef_c in
          newline*) _ef_state=pre_key _ef_key= ;;
          other=) _ef_state=pre_value _ef_value= _ef_space= ;;
          space*) _ef_space=$_ef_space$_ef_c ;;
          *) _ef_key=$_ef_key$_ef_space$_ef_c _ef_space= ;;
        esac
        ;;
      pre_value)
        case $_ef_class$_ef_c in
          newline*) _ef_state=pre_key _ef_push=yes ;;
          "other'") _ef_state=single ;;
          'other"') _ef_state=double ;;
          'other\') _ef_state=value_escape ;;
          other*) _ef_state=value _ef_value=$_ef_value$_ef_c _ef_space= ;;
        esac
        ;;
      value)
        case $_ef_class$_ef_c in
          newline*) _ef_state=pre_key _ef_push=yes ;;
          'other\') _ef_state=value_escape _ef_value=$_ef_value$_ef_space _ef_space= ;;
          space*) _ef_space=$_ef_space$_ef_c ;;
          *) _ef_value=$_ef_value$_ef_space$_ef_c _ef_space= ;;
        esac
        ;;
      value_escape)
        _ef_state=value
        [ "$_ef_class" = newline ] || _ef_value=$_ef_value$_ef_c
        ;;
      single)
        case $_ef_c in
          "'") _ef_state=pre_value ;;
          *) _ef_value=$_ef_value$_ef_c ;;
        esac
        ;;
      double)
        case $_ef_c in
          '"') _ef_state=pre_value ;;
          '\') _ef_state=double_escape ;;
          *) _ef_value=$_ef_value$_ef_c ;;
        esac
        ;;
      double_escape)
        _ef_state=double
        case $_ef_c in
          '"' | '\' | '`' | '$') _ef_value=$_ef_value$_ef_c ;;
          "$_ef_nl") ;;
          *) _ef_value=$_ef_value'\'$_ef_c ;;
        esac
        ;;
      comment)
        case $_ef_class$_ef_c in
          'other\') _ef_state=comment_escape ;;
          newline*) _ef_state=pre_key ;;
        esac
        ;;
      comment_escape) _ef_state=comment ;;
    esac
    # The end of a file ends an assignment as a newline does.
    if [ -z "$_ef_rest" ]; then
      case $_ef_state in
        pre_value | value | value_escape | single | double | double_escape) _ef_push=yes ;;
      esac
    fi
    if [ -n "$_ef_push" ]; then
      case $_ef_key in
        '' | [0123456789]* | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_]*)
          echo "victron-poller: $_ef_file: an assignment to a name that is not a variable name is ignored" >&2
          ;;
        *) set -- "$@" "$_ef_key=$_ef_value" ;;
      esac
      _ef_key= _ef_value= _ef_space= _ef_push=
    fi
  done
  # The command and its arguments came first: move them after the
  # assignments, where env expects them.
  while [ "$_ef_n" -gt 0 ]; do
    set -- "$@" "$1"
    shift
    _ef_n=$((_ef_n - 1))
  done
  env -i "$@"
}
