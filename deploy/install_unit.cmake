# Run by `cmake --install` (deploy/CMakeLists.txt sets MOEFLOW_UNIT and MOEFLOW_BINDIR): installs
# systemd/moeflow.service into <prefix>/lib/systemd/system with its ExecStart naming the installed
# binary instead of /usr/local/bin/moeflow.
if(IS_ABSOLUTE "${MOEFLOW_BINDIR}")
  set(_bin "${MOEFLOW_BINDIR}/moeflow")
else()
  set(_bin "${CMAKE_INSTALL_PREFIX}/${MOEFLOW_BINDIR}/moeflow")
endif()
file(READ "${MOEFLOW_UNIT}" _text)
string(REPLACE "ExecStart=/usr/local/bin/moeflow " "ExecStart=${_bin} " _text "${_text}")
set(_unit "${CMAKE_INSTALL_PREFIX}/lib/systemd/system/moeflow.service")
message(STATUS "Installing: $ENV{DESTDIR}${_unit}")
file(MAKE_DIRECTORY "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}/lib/systemd/system")
file(WRITE "$ENV{DESTDIR}${_unit}" "${_text}")
list(APPEND CMAKE_INSTALL_MANIFEST_FILES "${_unit}")
