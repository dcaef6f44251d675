@echo off
rem LoRA Studio launcher for Windows. Double-click it: the first run builds .venv in the app folder
rem and installs everything (PyTorch's CUDA build when an NVIDIA GPU is present), showing each step
rem in this window; then the app starts without a lingering console.
setlocal
cd /d "%~dp0..\.."
set "PY="
where py >nul 2>nul && set "PY=py -3"
if not defined PY where python >nul 2>nul && set "PY=python"
if not defined PY (
    echo LoRA Studio needs Python 3.10 or newer. Install it from https://www.python.org/downloads/
    echo ^(tick "Add python.exe to PATH"^), then double-click this file again.
    pause
    exit /b 1
)
%PY% launch.py --detach %*
if errorlevel 1 (
    echo.
    echo LoRA Studio did not set up or start. Read the message above, fix it, and double-click this file again:
    echo it continues where it stopped.
    pause
    exit /b 1
)
endlocal
