# Installation layout and the Debian package (cpack -G DEB), included at the end of
# CMakeLists.txt. From a Release build directory:
#
#   cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF
#   cmake --build build/release -j2 --target upkeep
#   (cd build/release && cpack -G DEB)      # -> upkeep_<version>_amd64.deb
#
# The package installs as a distribution package does: /usr/bin/upkeep,
# /etc/upkeep/upkeep.yaml (a conffile: dpkg keeps local edits across upgrades), the
# systemd unit in /lib/systemd/system with ExecStart=/usr/bin/upkeep, and the
# copyright and changelog under /usr/share/doc/upkeep. Depends is computed from
# the binary by dpkg-shlibdeps. The service is not started on install: edit the
# config, then `systemctl enable --now upkeep`. tests/integration/test_package.py
# builds it, installs it into a Debian 12 chroot and runs lintian.

include(GNUInstallDirs)
set(CMAKE_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)

install(TARGETS upkeep RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# An absolute destination: the config lives in /etc whatever the prefix is.
install(FILES config/upkeep.yaml DESTINATION /etc/upkeep
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)

# The shipped unit names /usr/local/bin (a hand install, README "Install"); the
# package installs under /usr. These rules lay out the package (absolute /etc and
# /lib/systemd paths), not a `cmake --install` into another prefix.
set(UPKEEP_PACKAGE_PREFIX /usr)
file(READ ${PROJECT_SOURCE_DIR}/config/upkeep.service upkeep_unit)
string(REPLACE "ExecStart=/usr/local/bin/upkeep "
       "ExecStart=${UPKEEP_PACKAGE_PREFIX}/${CMAKE_INSTALL_BINDIR}/upkeep " upkeep_unit "${upkeep_unit}")
if(NOT upkeep_unit MATCHES "ExecStart=${UPKEEP_PACKAGE_PREFIX}/${CMAKE_INSTALL_BINDIR}/upkeep ")
  message(FATAL_ERROR "packaging: config/upkeep.service has no ExecStart=/usr/local/bin/upkeep to rewrite")
endif()
file(WRITE ${PROJECT_BINARY_DIR}/packaging/upkeep.service "${upkeep_unit}")
install(FILES ${PROJECT_BINARY_DIR}/packaging/upkeep.service DESTINATION /lib/systemd/system
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)

# Debian policy: the copyright file and a compressed changelog in the doc directory;
# gzip -n so the package is the same bytes on every build.
install(FILES packaging/debian/copyright DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/upkeep
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
# Made at configure time, so a build of the upkeep target alone can be packaged.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS packaging/debian/changelog config/upkeep.service)
execute_process(COMMAND gzip -9n -c ${PROJECT_SOURCE_DIR}/packaging/debian/changelog
                OUTPUT_FILE ${PROJECT_BINARY_DIR}/packaging/changelog.gz
                RESULT_VARIABLE upkeep_gzip_rc)
if(NOT upkeep_gzip_rc EQUAL 0)
  message(FATAL_ERROR "packaging: gzip packaging/debian/changelog failed: ${upkeep_gzip_rc}")
endif()
install(FILES ${PROJECT_BINARY_DIR}/packaging/changelog.gz DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/upkeep
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
file(WRITE ${PROJECT_BINARY_DIR}/packaging/conffiles "/etc/upkeep/upkeep.yaml\n")

# ---- CPack: Debian package ----
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME upkeep)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX ${UPKEEP_PACKAGE_PREFIX})
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_CONTACT "upkeep maintainers <upkeep@users.noreply.github.com>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "forward proxy that enforces upstream connection reuse")
# The summary above is the synopsis line; this is the extended description.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
  "upkeep sits between an application and the origins it calls. It keeps a\n"
  "bounded pool of TLS connections (HTTP/2 or HTTP/1.1) to each origin and\n"
  "sends every request over it, so the application's requests reuse verified\n"
  "upstream connections instead of opening new ones. https:// URLs are pooled\n"
  "too when the application trusts upkeep's local CA (connect: intercept).")
string(REPLACE ";" "" CPACK_DEBIAN_PACKAGE_DESCRIPTION "${CPACK_DEBIAN_PACKAGE_DESCRIPTION}")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# Upstream TLS verifies against the system roots by default.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS ca-certificates)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${PROJECT_BINARY_DIR}/packaging/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
