//! The event side of a rule: which Sigma logsources and fields the sensor
//! produces, and a borrowed view of one enriched event.

use std::fmt::Write as _;

/// A Sigma logsource category the sensor produces events for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// A successful exec (`ExecEvent`).
    ProcessCreation,
    /// A file created, opened for writing, or renamed to (`FileEvent`).
    FileEvent,
    /// A file opened for reading (`FileEvent` OPEN_READ): rxsentry's own
    /// category, Sigma has no Linux one.
    FileAccess,
    /// A TCP connect or accept, a UDP connect or send (`NetworkEvent`).
    NetworkConnection,
    /// A TCP socket started listening: rxsentry's own category.
    NetworkListen,
    /// The allowlist stopped an exec (`PolicyEvent`, enforce mode; `Image`
    /// is the blocked program): rxsentry's own category, what `[[response]]`
    /// counts.
    AllowlistBlock,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::ProcessCreation,
        Category::FileEvent,
        Category::FileAccess,
        Category::NetworkConnection,
        Category::NetworkListen,
        Category::AllowlistBlock,
    ];
    pub(crate) const COUNT: usize = Self::ALL.len();

    /// The category as written in a rule's `logsource`.
    pub fn name(self) -> &'static str {
        match self {
            Category::ProcessCreation => "process_creation",
            Category::FileEvent => "file_event",
            Category::FileAccess => "file_access",
            Category::NetworkConnection => "network_connection",
            Category::NetworkListen => "network_listen",
            Category::AllowlistBlock => "allowlist_block",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether events of this category carry `field`.
    pub fn has(self, field: Field) -> bool {
        use Field::*;
        match field {
            Image | CommandLine | ParentImage | ParentCommandLine | User | ProcessId
            | ParentProcessId => true,
            TargetFilename => matches!(self, Category::FileEvent | Category::FileAccess),
            DestinationIp | DestinationPort | Initiated => self == Category::NetworkConnection,
            SourceIp | SourcePort | Protocol => {
                matches!(self, Category::NetworkConnection | Category::NetworkListen)
            }
        }
    }
}

/// A Sigma field the sensor fills (Linux names, as Sysmon for Linux and
/// SigmaHQ's Linux rules use them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Image,
    CommandLine,
    ParentImage,
    ParentCommandLine,
    User,
    ProcessId,
    ParentProcessId,
    TargetFilename,
    DestinationIp,
    DestinationPort,
    SourceIp,
    SourcePort,
    Initiated,
    Protocol,
}

impl Field {
    pub const ALL: [Field; 14] = [
        Field::Image,
        Field::CommandLine,
        Field::ParentImage,
        Field::ParentCommandLine,
        Field::User,
        Field::ProcessId,
        Field::ParentProcessId,
        Field::TargetFilename,
        Field::DestinationIp,
        Field::DestinationPort,
        Field::SourceIp,
        Field::SourcePort,
        Field::Initiated,
        Field::Protocol,
    ];
    pub(crate) const COUNT: usize = Self::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            Field::Image => "Image",
            Field::CommandLine => "CommandLine",
            Field::ParentImage => "ParentImage",
            Field::ParentCommandLine => "ParentCommandLine",
            Field::User => "User",
            Field::ProcessId => "ProcessId",
            Field::ParentProcessId => "ParentProcessId",
            Field::TargetFilename => "TargetFilename",
            Field::DestinationIp => "DestinationIp",
            Field::DestinationPort => "DestinationPort",
            Field::SourceIp => "SourceIp",
            Field::SourcePort => "SourcePort",
            Field::Initiated => "Initiated",
            Field::Protocol => "Protocol",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A command line as the event holds it: the argv vector (joined with
/// spaces when a rule looks at it) or an already joined string.
#[derive(Clone, Copy, Debug, Default)]
pub enum CommandLine<'a> {
    #[default]
    Unknown,
    Argv(&'a [String]),
    Joined(&'a str),
}

/// One enriched event as the rules see it, borrowing from the event (and
/// the process table): nothing is copied until a rule reads a field.
/// `None` is a field the event does not have (a `null` value matches it).
#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub category: Category,
    pub image: Option<&'a str>,
    pub command_line: CommandLine<'a>,
    pub parent_image: Option<&'a str>,
    pub parent_command_line: Option<&'a str>,
    pub user: Option<&'a str>,
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub target_filename: Option<&'a str>,
    pub destination_ip: Option<&'a str>,
    pub destination_port: Option<u32>,
    pub source_ip: Option<&'a str>,
    pub source_port: Option<u32>,
    pub initiated: Option<bool>,
    /// "tcp" or "udp".
    pub protocol: Option<&'a str>,
}

impl<'a> EventRef<'a> {
    /// An event of `category` with no fields set.
    pub fn new(category: Category) -> Self {
        Self {
            category,
            image: None,
            command_line: CommandLine::Unknown,
            parent_image: None,
            parent_command_line: None,
            user: None,
            pid: None,
            ppid: None,
            target_filename: None,
            destination_ip: None,
            destination_port: None,
            source_ip: None,
            source_port: None,
            initiated: None,
            protocol: None,
        }
    }

    /// Writes `field`'s value into `out` (cleared first); false when the
    /// event has no such field.
    pub fn write(&self, field: Field, out: &mut String) -> bool {
        out.clear();
        let text = |out: &mut String, v: Option<&str>| match v {
            Some(v) => {
                out.push_str(v);
                true
            }
            None => false,
        };
        let num = |out: &mut String, v: Option<u32>| match v {
            // Writing to a String cannot fail.
            Some(v) => write!(out, "{v}").is_ok(),
            None => false,
        };
        match field {
            Field::Image => text(out, self.image),
            Field::CommandLine => match self.command_line {
                CommandLine::Unknown => false,
                CommandLine::Joined(s) => text(out, Some(s)),
                CommandLine::Argv(argv) => {
                    for (i, a) in argv.iter().enumerate() {
                        if i > 0 {
                            out.push(' ');
                        }
                        out.push_str(a);
                    }
                    true
                }
            },
            Field::ParentImage => text(out, self.parent_image),
            Field::ParentCommandLine => text(out, self.parent_command_line),
            Field::User => text(out, self.user),
            Field::ProcessId => num(out, self.pid),
            Field::ParentProcessId => num(out, self.ppid),
            Field::TargetFilename => text(out, self.target_filename),
            Field::DestinationIp => text(out, self.destination_ip),
            Field::DestinationPort => num(out, self.destination_port),
            Field::SourceIp => text(out, self.source_ip),
            Field::SourcePort => num(out, self.source_port),
            Field::Initiated => text(
                out,
                self.initiated.map(|b| if b { "true" } else { "false" }),
            ),
            Field::Protocol => text(out, self.protocol),
        }
    }
}
